"""runtime.dashboard without a browser: what it counts from the stream's records, the drift rule, and the HTTP
server's safety (loopback by default, tokens, fixed routes, refused requests, slow clients that never slow the
writer)."""
from __future__ import annotations

import http.client
import json
import logging
import re
import socket
import threading
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest
from helpers.model_folder import make_folder
from prometheus_client.parser import text_string_to_metric_families

from runtime.annotation import frame_picture
from runtime.dashboard import TOKEN_ENV, Dashboard, DashboardError, dashboard_address
from runtime.dashboard.drift import MIN_FRAMES, DriftWindow
from runtime.dashboard.live import THUMB_WIDTH
from runtime.dashboard.server import COOKIE, MAX_HEAD_BYTES
from runtime.dashboard.state import REJECTS, DashboardState, error_kind
from runtime.detector import Prediction
from runtime.manifest import Thresholds
from runtime.records import error_record, prediction_record
from runtime.sources import Frame, open_source
from runtime.stream import main

THRESHOLDS = Thresholds(image=0.5, pixel=0.5, image_min=0.1, image_max=0.7, pixel_min=0.0, pixel_max=1.0)
MODEL = {"manifest_sha256": "ab" * 32, "plan": "DDIM 2 steps from t=24", "backend": "onnxruntime"}


def _frame(index: int, class_name: str = "nut", error: str | None = None) -> Frame:
    image = None if error else np.full((512, 512, 3), 90 + index % 50, np.uint8)
    return Frame(index, time.time(), "test", image=image, error=error, class_name=class_name)


def _prediction(score: float) -> Prediction:
    raw = np.full((8, 8), score, np.float32)
    raw[2:4, 2:4] = score * 2
    normal = np.clip(raw / 2, 0, 1)
    return Prediction(score, raw, float(np.clip(score, 0, 1)), score >= THRESHOLDS.image, normal, normal >= 0.5)


def _observe(target, index: int, score: float | None, class_name: str = "nut", error: str | None = None,
             latency: float = 0.02) -> None:
    """One record as the stream writes it (:func:`prediction_record` / :func:`error_record`), then observed."""
    frame = _frame(index, class_name, error)
    if score is None:
        target.observe(error_record(frame), frame, None, None)
        return
    prediction = _prediction(score)
    times = {"capture_to_verdict": latency, "prepare": 0.0, "batch_wait": 0.0, "model": latency, "output": 0.0}
    target.observe(prediction_record(frame, prediction, times, {}), frame, prediction, None)


# ------------------------------------------------------------------------------------------------ state, drift


def test_state_counts_records_per_class_and_keeps_the_last_rejects():
    state = DashboardState(THRESHOLDS)
    scores = [0.2, 0.6, 0.3, 0.9, 0.55] * 4
    for i, score in enumerate(scores):
        _observe(state, i, score, "nut" if i % 2 else "wood", latency=0.003 * (i + 1))
    _observe(state, 20, None, "nut", error="frame 20: 9000 x 9000 = 81,000,000 pixels, over the limit of 1")
    _observe(state, 22, None, "wood", error="frame 22: cannot decode")  # frame 21 never reached the stream
    snap = state.snapshot()
    rejected = [i for i, score in enumerate(scores) if score >= 0.5]
    assert snap["totals"] == {"frames": 22, "rejects": len(rejected), "errors": 2}
    assert snap["classes"]["nut"] == {"frames": 11, "rejects": sum(i % 2 == 1 for i in rejected), "errors": 1}
    assert snap["errors"] == {"limit": 1, "unreadable": 1}
    assert snap["gaps"] == 1 and snap["last_frame"] == 22
    assert [r["frame"] for r in snap["rejects"]] == rejected[::-1][:REJECTS]  # newest first, the last 12
    assert snap["rejects"][0]["threshold"] == 0.5 and snap["rejects"][0]["class"] == "nut"
    latency = snap["latency"]
    assert latency["count"] == 20 and latency["sum"] == pytest.approx(0.003 * sum(range(1, 21)))
    assert latency["buckets"][:3] == [1, 2, 5]  # <= 5 ms, <= 10 ms, <= 25 ms
    assert snap["window"]["p50_ms"] == pytest.approx(31.5) and snap["window"]["frames"] == 22


def test_the_window_counts_only_the_last_minute():
    now = [1000.0]
    state = DashboardState(THRESHOLDS, clock=lambda: now[0])
    for i in range(30):
        now[0] += 1.0
        _observe(state, i, 0.2)
    now[0] += 45.5  # the first 15 frames are now over a minute old
    window = state.snapshot()["window"]
    assert window["frames"] == 15 and window["fps"] == pytest.approx(15 / 60)


def test_error_kinds():
    assert error_kind("a.png: 9 x 9, a side over the limit of 8 pixels (raise it with --max-side)") == "limit"
    assert error_kind("not scored: the stream stopped after model failed: boom") == "not_scored"
    assert error_kind("grpc://127.0.0.1:8001: no Triton server answers") == "server"
    assert error_kind("a.png: cannot decode") == "unreadable"


def test_drift_warns_when_the_median_leaves_calibrations_normal_range():
    rule = (0.5, 0.1, 0.7)  # threshold, lowest and highest normal calibration score
    rng = np.random.default_rng(0)

    def judged(scores) -> dict:
        window = DriftWindow(rule)
        for score in scores:
            window.add(score)
        return window.report()

    assert judged(rng.uniform(0.15, 0.45, MIN_FRAMES - 1))["status"] == "warming up"
    steady = judged(np.r_[rng.uniform(0.15, 0.45, 150), rng.uniform(0.6, 0.9, 50)])  # a quarter defective
    assert steady["status"] == "ok" and 0.15 < steady["quantiles"]["p50"] < 0.45
    assert sum(steady["histogram"]["counts"]) == 200 and steady["histogram"]["low"] <= 0.1
    higher = judged(rng.uniform(0.45, 0.65, 200))  # the normal parts now score like calibration's top
    assert higher["status"] == "drift" and "above the threshold" in higher["message"]
    darker = judged(rng.uniform(0.01, 0.09, 200))
    assert darker["status"] == "drift" and "below the lowest calibration score" in darker["message"]
    assert DriftWindow(None).report()["status"] == "no reference"


# ------------------------------------------------------------------------------------------- address and token


def test_loopback_by_default_and_a_token_for_any_other_address(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert dashboard_address("127.0.0.1:8080") == dashboard_address("127.0.0.1:8080", None)
    assert dashboard_address("localhost:0").token is None
    assert dashboard_address("[::1]:9000").host == "::1"
    with pytest.raises(DashboardError, match="needs a token: give --dashboard-token TOKEN or set DIAD_DASHBOARD"):
        dashboard_address("0.0.0.0:8080")
    assert dashboard_address("0.0.0.0:8080", "s3cret").token == "s3cret"
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert dashboard_address("0.0.0.0:8080").token == "from-env"
    for bad in ("8080", "127.0.0.1", "127.0.0.1:99999", "http://127.0.0.1:8080"):
        with pytest.raises(DashboardError, match="expected HOST:PORT|over 65535"):
            dashboard_address(bad)


def test_the_stream_refuses_a_public_dashboard_without_a_token_before_opening_anything(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    model = tmp_path / "model"
    model.mkdir()  # a folder, never opened: the dashboard is checked first
    with pytest.raises(DashboardError, match="0.0.0.0 is reachable from other machines"):
        main(["--model", str(model), "--source", "rtsp://192.0.2.1/none", "--dashboard", "0.0.0.0:0"])


# ----------------------------------------------------------------------------------------------- HTTP server


@pytest.fixture
def dashboard():
    board = Dashboard(dashboard_address("127.0.0.1:0", "t0ken"), thresholds=THRESHOLDS, model=MODEL,
                      source=open_source("synthetic"), render=frame_picture)
    for i, score in enumerate([0.2, 0.8, 0.3, 0.6]):
        _observe(board, i, score, "wood")
    yield board
    board.close()


def _request(board: Dashboard, path: str, method: str = "GET", headers: dict | None = None,
             token: str | None = "t0ken") -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", board.address.port, timeout=10)
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    connection.request(method, path, headers={**auth, **(headers or {})})
    response = connection.getresponse()
    out = response.status, dict(response.getheaders()), response.read()
    connection.close()
    return out


def _raw(board: Dashboard, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", board.address.port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_every_request_needs_the_token(dashboard):
    assert _request(dashboard, "/api/state", token=None)[0] == 401
    assert _request(dashboard, "/api/state", token="wrong")[0] == 401
    assert _request(dashboard, "/metrics", token=None)[0] == 401
    assert _request(dashboard, "/app.js", token=None)[0] == 401
    status, _, body = _request(dashboard, "/api/state")
    assert status == 200 and json.loads(body)["totals"]["frames"] == 4
    assert _request(dashboard, "/api/state?token=t0ken", token=None)[0] == 200
    status, headers, page = _request(dashboard, "/?token=t0ken", token=None)
    assert status == 200 and b"<title>diad-edge line</title>" in page
    cookie = headers["Set-Cookie"].split(";")[0]
    assert cookie.startswith(f"{COOKIE}=") and "t0ken" not in cookie and "HttpOnly" in headers["Set-Cookie"]
    assert _request(dashboard, "/style.css", headers={"Cookie": cookie}, token=None)[0] == 200
    assert _request(dashboard, "/api/state", headers={"Cookie": f"{COOKIE}=forged"}, token=None)[0] == 401


def test_only_fixed_routes_and_get(dashboard):
    for path in ("/../../etc/passwd", "/static/page.html", "/page.html", "/rejects/../manifest.json",
                 "/rejects/abc.jpg", "/rejects/999.jpg", "/api/stateX"):
        assert _request(dashboard, path)[0] == 404, path
    for method in ("POST", "PUT", "DELETE", "HEAD", "OPTIONS", "BREW"):
        status, headers, _ = _request(dashboard, "/api/state", method)
        assert status == 405 and headers["Allow"] == "GET", method
    assert _request(dashboard, "/api/state", headers={"Content-Length": "4"})[0] == 413
    big = b"GET /api/state HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n"
    assert _raw(dashboard, big).startswith(b"HTTP/1.0 431 ")
    assert _raw(dashboard, b"GET /" + b"a" * MAX_HEAD_BYTES + b" HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.0 414 ")
    assert _raw(dashboard, b"\x16\x03\x01 not http\r\n\r\n").startswith(b"HTTP/1.0 400 ")


def test_rejects_and_the_live_frame_are_jpegs_drawn_on_request(dashboard):
    state = json.loads(_request(dashboard, "/api/state")[2])
    assert [r["frame"] for r in state["rejects"]] == [3, 1]
    full = cv2.imdecode(np.frombuffer(_request(dashboard, f"/rejects/{state['rejects'][0]['id']}.jpg")[2], np.uint8),
                        cv2.IMREAD_COLOR)
    thumb = cv2.imdecode(np.frombuffer(_request(dashboard, f"/rejects/{state['rejects'][0]['id']}.thumb.jpg")[2],
                                       np.uint8), cv2.IMREAD_COLOR)
    assert full.shape == (512, 512, 3) and thumb.shape == (THUMB_WIDTH, THUMB_WIDTH, 3)
    status, headers, body = _request(dashboard, "/frame.jpg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and body[:2] == b"\xff\xd8"


def test_metrics_parse_with_prometheus_own_parser(dashboard):
    _observe(dashboard, 4, None, "wood", error="not scored: the stream stopped after model failed: x")
    status, headers, body = _request(dashboard, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("diad_frames_total", (("class", "wood"),))] == 5
    assert samples[("diad_rejects_total", (("class", "wood"),))] == 2
    assert samples[("diad_errors_total", (("kind", "not_scored"),))] == 1
    assert samples[("diad_latency_seconds_count", ())] == 4
    assert samples[("diad_latency_seconds_bucket", (("le", "0.025"),))] == 4
    assert samples[("diad_source_up", ())] == 1 and samples[("diad_source_reconnects_total", ())] == 0
    assert samples[("diad_model_info", tuple(sorted(MODEL.items())))] == 1
    assert families["diad_latency_seconds"].type == "histogram" and families["diad_frames"].type == "counter"
    assert "process_cpu_seconds_total" not in body.decode()  # a private registry: only the stream's metrics


def _open_live_view(board: Dashboard, receive_buffer: int | None = None) -> socket.socket:
    sock = socket.socket()
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect(("127.0.0.1", board.address.port))
    sock.sendall(b"GET /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0ken\r\n\r\n")
    return sock


def test_a_stalled_browser_loses_frames_and_never_slows_the_writer(dashboard):
    stalled = _open_live_view(dashboard, receive_buffer=4096)  # never read: the server's send blocks at once
    with urllib.request.urlopen(urllib.request.Request(
            f"{dashboard.url}api/events", headers={"Authorization": "Bearer t0ken"}), timeout=10) as live:
        seen: list[int] = []

        def read() -> None:
            for line in live:
                if line.startswith(b"data: "):
                    seen.append(json.loads(line[6:])["frame"])
                    if seen[-1] >= 1003:
                        return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        slowest = 0.0
        for i in range(4, 1004):
            start = time.perf_counter()
            _observe(dashboard, i, 0.3, "wood")
            slowest = max(slowest, time.perf_counter() - start)
            time.sleep(0.002)
        reader.join(timeout=10)
    stalled.close()
    assert slowest < 0.05  # observing is a few counters and a reference, whoever watches
    assert seen and seen[-1] == 1003 and len(seen) < 1000  # the live browser got the newest, not every frame
    assert json.loads(_request(dashboard, "/api/state")[2])["totals"]["frames"] == 1004


def test_observing_never_raises_into_the_stream(dashboard, caplog):
    dashboard.observe({"frame": 5}, _frame(5), None, None)  # a record without what the dashboard reads
    dashboard.observe({"frame": 6}, _frame(6), None, None)
    assert caplog.text.count("dashboard: cannot take frame") == 1


def test_a_taken_port_is_a_clear_error(dashboard):
    with pytest.raises(DashboardError, match="cannot listen there"):
        Dashboard(dashboard.address, thresholds=THRESHOLDS, model=MODEL, source=open_source("synthetic"),
                  render=frame_picture)


def test_the_stream_keeps_its_other_outputs_and_closes_the_dashboard_at_the_end(tmp_path, caplog):
    caplog.set_level(logging.INFO, "runtime.dashboard")
    model = make_folder(tmp_path / "model").root
    out, saved = tmp_path / "out.jsonl", tmp_path / "saved"
    assert main(["--model", str(model), "--frames", "12", "--jsonl", str(out), "--save", str(saved),
                 "--dashboard", "127.0.0.1:0"]) == 0
    assert [json.loads(line)["frame"] for line in out.read_text().splitlines()] == list(range(12))
    assert len(list(saved.glob("*.png"))) == 12
    (url,) = re.findall(r"dashboard on (http://127.0.0.1:\d+/)", caplog.text)
    with pytest.raises(urllib.error.URLError, match="refused"):  # it closed with the stream
        urllib.request.urlopen(url, timeout=5)
