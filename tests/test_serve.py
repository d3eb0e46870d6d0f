"""``python -m runtime.serve`` with a real Triton server on loopback, started and stopped by the tests, and the
stream as its client: scores equal the local Detector's, Triton batches concurrent clients, malformed requests are
answered with errors while the server goes on, SIGTERM drains and exits 0, a stream outlives a server restart.
Each server takes seconds to start (Triton, then the model's stub process imports the runtime): one serves all
tests, restarted once."""
from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from runtime.detector import Detector
from runtime.errors import ModelFolderError, ServerError
from runtime.serve import main as serve_main
from runtime.manifest import MANIFEST, Thresholds, sha256
from runtime.serving import environment
from runtime.serving.client import RemoteDetector, grpc_address
from runtime.serving.repository import VERSION_DIGITS
from runtime.sources import open_source
from runtime.stream import main as stream_main
from runtime.stream_run import stream
from helpers.model_folder import make_folder

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class Server:
    """``python -m runtime.serve`` on loopback ports; :meth:`stop` sends SIGTERM and returns the exit status."""

    def __init__(self, model_dir: Path, *extra: str):
        self.http, self.grpc, self.metrics = free_ports(3)
        self.log = model_dir.parent / f"serve-{self.grpc}.log"
        self.command = [sys.executable, "-m", "runtime.serve", "--model", str(model_dir), "--address", "127.0.0.1",
                        "--http-port", str(self.http), "--grpc-port", str(self.grpc), "--metrics-port",
                        str(self.metrics), *extra]
        self.start()

    def start(self) -> None:
        """Start the server (again, on the same ports) and wait until it is ready."""
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(self.command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.ready():
            assert self.process.poll() is None, f"the server exited: {self.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the server is not ready: {self.log.read_text()[-3000:]}"
            time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc}"

    def get(self, path: str, port: int | None = None) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port or self.http}{path}", timeout=2) as response:
                return response.status, response.read().decode()
        except OSError:
            return 0, ""

    def ready(self) -> bool:
        return self.get("/v2/health/ready")[0] == 200

    def client(self) -> grpcclient.InferenceServerClient:
        return grpcclient.InferenceServerClient(f"127.0.0.1:{self.grpc}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


def infer(client: grpcclient.InferenceServerClient, frames: np.ndarray, outputs: tuple[str, ...] = ("score",)):
    tensor = grpcclient.InferInput("frames", list(frames.shape), grpcclient.np_to_triton_dtype(frames.dtype))
    tensor.set_data_from_numpy(frames)
    return client.infer("diad", [tensor], outputs=[grpcclient.InferRequestedOutput(name) for name in outputs])


@pytest.fixture(scope="module")
def served_folder(tmp_path_factory) -> Path:
    """A calibrated tiny model folder (thresholds inside the score range, so both verdicts occur)."""
    manifest = make_folder(tmp_path_factory.mktemp("serve") / "model")
    manifest.set_thresholds(Thresholds(image=2.5, pixel=2.5, image_min=1.0, image_max=4.0, pixel_min=0.0,
                                       pixel_max=5.0, method="test"))
    return manifest.root


@pytest.fixture(scope="module")
def server(served_folder):
    """A server whose batcher waits up to 20 ms for a batch to fill."""
    server = Server(served_folder, "--max-queue-delay-us", "20000")
    yield server
    assert server.stop() == 0, server.log.read_text()[-3000:]


def frames_of(sizes, seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def test_scores_equal_the_local_detectors(server, served_folder):
    frames = frames_of([(8, 8), (30, 40), (64, 48), (17, 9)])
    local = Detector(served_folder).predict(frames)
    with RemoteDetector(server.url, maps=True) as remote:
        assert remote.calibrated and remote.image_size == 8
        served = remote.predict(frames)
    labels = set()
    for a, b in zip(local, served, strict=True):
        assert b.score == pytest.approx(a.score, abs=1e-6)
        assert b.pred_score == pytest.approx(a.pred_score, abs=1e-6)
        assert b.pred_label == a.pred_label
        np.testing.assert_allclose(b.raw_map, a.raw_map, atol=1e-6)
        np.testing.assert_allclose(b.anomaly_map, a.anomaly_map, atol=1e-6)
        np.testing.assert_array_equal(b.pred_mask, a.pred_mask)
        labels.add(a.pred_label)
    assert labels == {True, False}
    # frames of any size sent as they are: the server pre-processes them itself
    with server.client() as client:
        for frame, prediction in zip(frames, local, strict=True):
            score = infer(client, frame[None]).as_numpy("score")
            assert score.shape == (1, 1) and score[0, 0] == pytest.approx(prediction.score, abs=1e-6)


def test_version_is_the_manifests_hash_and_endpoints_answer(server, served_folder):
    digest = sha256(served_folder / MANIFEST)
    with server.client() as client:
        metadata = client.get_model_metadata("diad", as_json=True)
        assert metadata["versions"] == [str(int(digest[:VERSION_DIGITS], 16))]
        assert client.is_server_live() and client.is_model_ready("diad")
        infer(client, frames_of([(8, 8)])[0][None])
    assert server.get("/v2/health/live")[0] == 200
    status, metrics = server.get("/metrics", server.metrics)
    assert status == 200 and 'nv_inference_count{model="diad"' in metrics
    with RemoteDetector(server.url) as remote:
        assert remote.manifest_sha256 == digest and remote.summary["steps"] == 3


def test_a_server_with_steps_0_runs_the_vae_only_plan(served_folder):
    """``--steps 0``: the served detector runs the VAE-only plan (the local one's scores, not the DDIM ones) and
    clients read that plan back."""
    frames = frames_of([(8, 8), (30, 40), (17, 9)], seed=3)
    local = [p.score for p in Detector(served_folder, steps=0).predict(frames)]
    ddim = [p.score for p in Detector(served_folder).predict(frames)]
    server = Server(served_folder, "--steps", "0")
    try:
        with RemoteDetector(server.url) as remote:
            assert remote.summary["steps"] == 0 and remote.summary["start_t"] == 0
            served = [p.score for p in remote.predict(frames)]
    finally:
        assert server.stop() == 0, server.log.read_text()[-3000:]
    assert served == pytest.approx(local, abs=1e-6) and served != pytest.approx(ddim, abs=1e-4)


def test_concurrent_clients_are_batched(server):
    def camera(seed: int) -> list[float]:
        with server.client() as client:
            return [float(infer(client, frame[None]).as_numpy("score")[0, 0]) for frame in frames_of([(8, 8)] * 6,
                                                                                                      seed)]

    with ThreadPoolExecutor(8) as pool:
        scores = list(pool.map(camera, range(8)))
    assert all(len(s) == 6 for s in scores)
    with server.client() as client:
        stats = client.get_inference_statistics("diad", as_json=True)["model_stats"][0]
    formed = {int(b["batch_size"]) for b in stats["batch_stats"]}
    assert max(formed) > 1, stats["batch_stats"]
    assert int(stats["execution_count"]) < int(stats["inference_count"])


@pytest.mark.parametrize(
    "frames, message",
    [
        (np.zeros((1, 8, 8, 3), np.float32), "data-type is 'FP32', but model 'diad' expects 'UINT8'"),
        (np.zeros((1, 8, 8), np.uint8), "unexpected shape for input 'frames'"),
        (np.zeros((1, 0, 8, 3), np.uint8), "frames[0]: expected an RGB uint8 array of shape (H, W, 3), got an empty"),
        (np.zeros((1, 20000, 2, 3), np.uint8), "frames[0]: 2 x 20000, a side over the limit of 16384 pixels"),
        (np.zeros((5, 8, 8, 3), np.uint8), "batch-size must be <= 4"),
    ],
    ids=["dtype", "rank", "empty", "oversized", "batch"],
)
def test_malformed_requests_get_errors_and_the_server_goes_on(server, frames, message):
    with server.client() as client:
        with pytest.raises(InferenceServerException) as refused:
            infer(client, frames)
        assert message in refused.value.message()
        assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert infer(client, frames_of([(8, 8)])[0][None]).as_numpy("score").shape == (1, 1)


def test_a_bad_frame_fails_only_its_own_request(server):
    """Requests batched together: the one with a bad frame gets its error, the others their scores."""
    good, bad = frames_of([(8, 8)])[0][None], np.zeros((1, 0, 8, 3), np.uint8)

    def send(frames):
        with server.client() as client:
            try:
                return float(infer(client, frames).as_numpy("score")[0, 0])
            except InferenceServerException as exc:
                return exc.message()

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(send, [good, bad, good, bad, good, good]))
    assert all(isinstance(a, float) for a in answers[0::2] + answers[5:])
    assert all("empty image" in a for a in answers[1:4:2])


def drained(server: Server) -> bool:
    """SIGTERM ``server`` while it pre-processes a large frame (seconds): the request is answered, the server
    exits 0. The frame goes over HTTP, whose request is sent whole (the server has read it) before the signal."""
    big = frames_of([(3000, 3000)])[0]
    header = json.dumps({
        "inputs": [{"name": "frames", "shape": [1, *big.shape], "datatype": "UINT8",
                    "parameters": {"binary_data_size": big.nbytes}}],
        "outputs": [{"name": "score", "parameters": {"binary_data": False}}],
    }).encode()
    connection = http.client.HTTPConnection("127.0.0.1", server.http, timeout=60)
    connection.request("POST", "/v2/models/diad/infer", header + big.tobytes(),
                       {"Inference-Header-Content-Length": str(len(header)),
                        "Content-Type": "application/octet-stream"})
    time.sleep(0.3)  # the server has the request (its last bytes left the socket buffer) and works on it
    server.process.send_signal(signal.SIGTERM)
    response = connection.getresponse()
    answer = response.read().decode()
    connection.close()  # Triton waits for open HTTP connections before it exits
    assert response.status == 200, f"{answer}: {server.log.read_text()[-2000:]}"
    assert np.isfinite(json.loads(answer)["outputs"][0]["data"][0])
    assert server.process.wait(timeout=60) == 0
    assert "stopped by SIGTERM; Triton exited with status 0" in server.log.read_text()
    return True


def test_the_stream_goes_on_through_a_server_restart(server):
    """The stream scores through a server; SIGTERM finishes the request in flight and the server exits 0; the
    stream writes error records meanwhile and scores again once the server is back."""
    records: list[dict] = []

    class Sink:
        def write(self, record: dict) -> None:
            records.append(record)

    def count(key: str) -> int:
        return sum(key in r for r in records)

    def wait_for(condition, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, records[-5:]
            time.sleep(0.05)

    stop = threading.Event()
    remote = RemoteDetector(server.url, backoff=(0.2, 1.0))
    source = open_source("synthetic", size=32, max_fps=20)
    summary: dict = {}
    runner = threading.Thread(target=lambda: summary.update(stream(remote, source, [Sink()], stop_event=stop)))
    runner.start()
    try:
        wait_for(lambda: count("score") >= 5)
        assert drained(server)
        scored = count("score")
        wait_for(lambda: count("error") >= 3)
        server.start()
        wait_for(lambda: count("score") >= scored + 5)
    finally:
        stop.set()
        runner.join(timeout=60)
        remote.close()
    errors = [r["error"] for r in records if "error" in r]
    assert all(server.url in e for e in errors), errors[:3]
    frames = [r["frame"] for r in records]
    assert frames == list(range(len(frames)))  # one record per frame, in order
    first_error = next(k for k, r in enumerate(records) if "error" in r)
    assert any("score" in r for r in records[first_error:])  # scoring resumed after the restart
    assert summary["stop_reason"] == "stop requested"


def test_stream_command_scores_through_the_server(server, served_folder, tmp_path):
    out = tmp_path / "records.jsonl"
    assert stream_main(["--server", server.url, "--source", "synthetic", "--frames", "3", "--jsonl", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["frame"] for r in records] == [0, 1, 2]
    assert all(r["label"] in ("anomalous", "normal") and "server" in r["stage_ms"] for r in records)


# ------------------------------------------------------------------------------------------ without a server


def test_grpc_address():
    assert grpc_address("grpc://10.0.0.5:9001") == "10.0.0.5:9001"
    assert grpc_address("localhost") == "localhost:8001"
    with pytest.raises(ServerError, match="expected grpc://HOST:PORT"):
        grpc_address("http://localhost:8000")


def test_no_server_is_a_clear_error():
    (port,) = free_ports(1)
    with pytest.raises(ServerError, match="no Triton server answers.*python -m runtime.serve"):
        RemoteDetector(f"grpc://127.0.0.1:{port}")


def test_an_interpreter_without_a_shared_libpython_is_refused(monkeypatch):
    install = environment.find_triton()
    assert environment.check_interpreter(install).is_file()  # this test environment can serve
    monkeypatch.setattr(environment.sysconfig, "get_config_var", lambda name: 0 if name == "Py_ENABLE_SHARED" else "")
    with pytest.raises(ServerError, match="has no shared libpython.*--enable-shared"):
        environment.check_interpreter(install)


def test_serve_refuses_a_batch_over_the_model_folders(served_folder):
    with pytest.raises(ServerError, match=f"--max-batch 64: {served_folder} runs batches of at most 4"):
        serve_main(["--model", str(served_folder), "--max-batch", "64"])



def test_serve_refuses_a_plan_the_schedule_cannot_make(served_folder):
    with pytest.raises(ModelFolderError, match="cannot run DDIM steps=-1, start_t=None: DDIM steps -1: expected 0"):
        serve_main(["--model", str(served_folder), "--steps", "-1"])
