"""Pieces for the live-stream benchmarks and tests: a network camera on loopback (MJPEG over HTTP), a
``python -m runtime.stream`` process read as it runs, and Debian's headless Chromium."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
DASHBOARD_URL = re.compile(r"dashboard on (http://\S+/)")
SUMMARY = re.compile(r"summary: (\d+) frames \((\d+) errors, (\d+) dropped\) in ([\d.]+) s, ([\d.]+) fps")


class MjpegCamera:
    """A network camera on loopback: ``GET /stream.mjpg`` answers ``multipart/x-mixed-replace`` JPEG frames at
    ``fps``, as many IP cameras do. :meth:`stop` drops every connection and stops listening; :meth:`start` listens
    again on the same port. ``sent`` counts the frames sent."""

    def __init__(self, fps: float = 20.0, size: tuple[int, int] = (320, 240)) -> None:
        self.fps, self.size = fps, size
        self.port = 0
        self.sent = 0
        self._server: ThreadingHTTPServer | None = None
        self._stopping = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def picture(self, index: int) -> bytes:
        """Frame ``index`` as JPEG: a part sliding along a belt."""
        width, height = self.size
        image = np.full((height, width, 3), 60, np.uint8)
        x = index * 3 % (width - width // 8)
        cv2.rectangle(image, (x, height // 3), (x + width // 8, 2 * height // 3), (40, 180, 220), -1)
        return cv2.imencode(".jpg", image)[1].tobytes()

    def _send_frames(self, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        handler.end_headers()
        due = time.monotonic()
        try:
            while not self._stopping.wait(max(due - time.monotonic(), 0.0)):
                data = self.picture(self.sent)
                handler.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%b\r\n"
                                    % (len(data), data))
                self.sent += 1
                due += 1.0 / self.fps
        except OSError:  # the reader went away
            pass

    def start(self) -> None:
        camera = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/stream.mjpg":
                    camera._send_frames(self)
                else:
                    self.send_error(404)

            def log_message(self, *args: object) -> None:
                pass

        self._stopping.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class StreamProcess:
    """``python -m runtime.stream ARGS`` with its JSON lines (each with the ``time.time()`` it was read) and its log
    lines collected by threads as they come."""

    def __init__(self, *args: str) -> None:
        self.lines: list[tuple[float, dict]] = []
        self.log: list[str] = []
        self.process = subprocess.Popen([sys.executable, "-m", "runtime.stream", *args], cwd=ROOT,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._threads = [threading.Thread(target=self._read_lines, daemon=True),
                         threading.Thread(target=self._read_log, daemon=True)]
        for thread in self._threads:
            thread.start()

    def _read_lines(self) -> None:
        for line in self.process.stdout:
            self.lines.append((time.time(), json.loads(line)))

    def _read_log(self) -> None:
        for line in self.process.stderr:
            self.log.append(line)

    @property
    def records(self) -> list[dict]:
        return [record for _, record in self.lines]

    def wait_for(self, condition: Callable[[], object], what: str, timeout: float = 60.0) -> None:
        """Poll ``condition()`` until true; :class:`RuntimeError` naming ``what`` (with the log) if the process
        ends first or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what}: not within {timeout} s (exit status {self.process.poll()}); "
                                   f"log:\n{''.join(self.log)}")
            time.sleep(0.05)

    def dashboard_url(self) -> str:
        """The dashboard's address, once the stream has logged it."""
        found: list[str] = []

        def announced() -> bool:
            found.extend(m.group(1) for line in self.log if (m := DASHBOARD_URL.search(line)))
            return bool(found)

        self.wait_for(announced, "the dashboard's address in the log")
        return found[0]

    def finish(self, timeout: float = 600.0) -> tuple[int, str]:
        """Wait for the stream to end by itself; the exit status and the whole log."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for thread in self._threads:
            thread.join(timeout=10)
        return self.process.returncode, "".join(self.log)

    def stop(self) -> tuple[int, str]:
        """SIGTERM (the stream finishes the frames in flight), then :meth:`finish`."""
        self.process.terminate()
        return self.finish(60.0)


def summary(log: str) -> dict:
    """The figures of the stream's summary line: ``frames``, ``errors``, ``dropped``, ``seconds``, ``fps``."""
    match = SUMMARY.search(log)
    if match is None:
        raise RuntimeError(f"no summary line in the stream's log:\n{log}")
    frames, errors, dropped, seconds, fps = match.groups()
    return {"frames": int(frames), "errors": int(errors), "dropped": int(dropped), "seconds": float(seconds),
            "fps": float(fps)}


def chromium(width: int = 1400, height: int = 1100):
    """Debian's Chromium, headless, through its chromedriver (selenium). Raises :class:`RuntimeError` saying how
    to install it when it is missing."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} missing: install Debian's Chromium and its driver "
                           "(apt-get install -y chromium chromium-driver; make venv does it)")
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={width},{height}"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)))
