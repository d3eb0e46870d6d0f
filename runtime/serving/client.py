"""``RemoteDetector``: score frames through a Triton server (``python -m runtime.serve``) over gRPC.

It offers what the stream asks of a :class:`~runtime.detector.Detector`: :meth:`prepare` checks a frame and
resizes it to the model's input size with the runtime's own resampler (so the server's pre-processing leaves it
as it is and the scores are the server's, exactly, for a fraction of the bytes), :meth:`submit` / :meth:`collect`
keep up to :attr:`slots` requests in flight, :meth:`predictions` turns the outputs into
:class:`~runtime.detector.Prediction` s. Many camera processes share one server, which batches their frames.

A server that is down, restarting or failing makes :meth:`collect` raise :class:`~runtime.errors.ServerError`
(the stream writes error records for those frames and goes on); the next :meth:`submit` reconnects, after a
wait that starts at ``backoff[0]`` seconds and doubles with each failed attempt up to ``backoff[1]``. ``tritonclient`` is imported
only here, when a server is asked for.
"""
from __future__ import annotations

import json
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np

from runtime.detector import Prediction
from runtime.errors import ServerError
from runtime.limits import Limits
from runtime.manifest import Thresholds
from runtime.preprocess import check_rgb, resize
from runtime.serving.repository import INPUT, MAP_OUTPUTS, OUTPUTS

DEFAULT_PORT = 8001
BACKOFF_S = (0.5, 8.0)  # reconnecting: the first wait, the longest (as the live sources')
TIMEOUT_S = 60.0  # one request, queueing included
CLIENT_HINT = 'pip install "tritonclient[grpc]" (the serving extra: pip install -e ".[serve]")'


def grpc_address(url: str) -> str:
    """``grpc://HOST:PORT`` (or ``HOST:PORT``, ``HOST``) -> ``HOST:PORT`` for tritonclient."""
    parts = urlsplit(url if "://" in url else f"grpc://{url}")
    if parts.scheme != "grpc" or not parts.hostname or parts.path not in ("", "/"):
        raise ServerError(f"--server {url!r}: expected grpc://HOST:PORT (Triton's gRPC endpoint)")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{parts.port or DEFAULT_PORT}"


@dataclass
class RemoteOutput:
    """A request's outputs (``(B,)`` and, when asked for, ``(B, S, S)``) and its ``seconds`` on the server's side
    as the client saw them (``server``: send to answer)."""

    score: np.ndarray
    pred_score: np.ndarray
    pred_label: np.ndarray
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


class RemoteDetector:
    """A Triton-served model (``model`` at ``url``), with ``maps`` (the anomaly maps and masks, for annotated
    frames) or without (scores and verdicts only). ``timeout_s``: one request's limit; ``backoff``: reconnecting's
    first and longest wait."""

    slots = 2

    def __init__(self, url: str, model: str = "diad", limits: Limits | None = None, maps: bool = False,
                 timeout_s: float = TIMEOUT_S, backoff: tuple[float, float] = BACKOFF_S):
        try:
            import tritonclient.grpc as grpcclient
        except ImportError:
            raise ServerError(f"--server needs the Triton client: {CLIENT_HINT}") from None
        self._grpc = grpcclient
        self.url, self.address, self.model = url, grpc_address(url), model
        self.limits, self.maps, self.timeout_s = limits or Limits(), maps, timeout_s
        self._client = None
        self._backoffs = backoff
        self._backoff, self._next_try = backoff[0], 0.0
        self._inflight: deque[tuple[Future, float, int]] = deque()
        self._connect()

    # ------------------------------------------------------------------------------------------ connection
    def _connect(self) -> None:
        """Open a channel and read the model's config; :class:`ServerError` when the server or model is not there."""
        client = self._grpc.InferenceServerClient(self.address)
        try:
            if not client.is_model_ready(self.model):
                raise ServerError(f"{self.url}: model {self.model!r} is not ready (is it served there?)")
            config = client.get_model_config(self.model, as_json=True)["config"]
            metadata = client.get_model_metadata(self.model, as_json=True)
        except ServerError:
            client.close()
            raise
        except Exception as exc:  # noqa: BLE001 (tritonclient raises InferenceServerException, grpc errors)
            client.close()
            raise ServerError(f"{self.url}: no Triton server answers ({_reason(exc)}); start one with "
                              "python -m runtime.serve --model MODEL_FOLDER") from None
        p = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
        try:
            self.image_size = int(p["image_size"])
            self.calibrated = json.loads(p["calibrated"])
            self.summary = json.loads(p["summary"])
            self.manifest_sha256 = p["manifest_sha256"]
        except (KeyError, ValueError) as exc:
            client.close()
            raise ServerError(f"{self.url}: model {self.model!r} is not a diad-edge model (config parameter "
                              f"{exc} missing or malformed; serve it with python -m runtime.serve)") from None
        self.version = max(metadata["versions"], key=int)
        self._client, self._backoff = client, self._backoffs[0]

    def _reconnect(self) -> None:
        """Wait out the backoff, then connect; on failure the next wait doubles."""
        time.sleep(max(0.0, self._next_try - time.monotonic()))
        try:
            self._connect()
        except ServerError:
            self._failed()
            raise

    def _failed(self) -> None:
        """Drop the channel; the next attempt waits the backoff, which doubles."""
        if self._client is not None:
            self._client.close()
            self._client = None
        self._next_try = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self._backoffs[1])

    # ------------------------------------------------------------------------------------------ Detector's
    @property
    def thresholds(self) -> Thresholds:
        """Only ``calibrated`` is known here; the server applies the thresholds."""
        return Thresholds(image=0.0, pixel=0.0) if self.calibrated else Thresholds()

    @property
    def pending(self) -> int:
        return len(self._inflight)

    def prepare(self, image: np.ndarray, what: str = "image") -> np.ndarray:
        """A checked RGB uint8 frame resized to the model's ``(S, S, 3)`` (the server's pre-processing keeps it)."""
        return resize(check_rgb(image, what, self.limits), self.image_size)

    def submit(self, frames: np.ndarray) -> None:
        """Send ``frames`` (``uint8 (B, S, S, 3)`` from :meth:`prepare`, or frames of any one size); reconnects
        first when the last request failed. :class:`ServerError` when the server cannot be reached."""
        if self._client is None:
            self._reconnect()
        frames = np.ascontiguousarray(frames)
        tensor = self._grpc.InferInput(INPUT, list(frames.shape), "UINT8")
        tensor.set_data_from_numpy(frames)
        names = OUTPUTS + (MAP_OUTPUTS if self.maps else ())
        outputs = [self._grpc.InferRequestedOutput(name) for name in names]
        done: Future = Future()

        def callback(result, error) -> None:
            done.set_result((result, error))

        try:
            self._client.async_infer(self.model, [tensor], callback, outputs=outputs, client_timeout=self.timeout_s)
        except Exception as exc:  # noqa: BLE001 (a channel that broke on sending)
            self._failed()
            raise ServerError(f"{self.url}: cannot send ({_reason(exc)})") from None
        self._inflight.append((done, time.perf_counter(), len(frames)))

    def collect(self) -> RemoteOutput:
        """The oldest request's outputs (waits for them); :class:`ServerError` when it failed."""
        if not self._inflight:
            raise RuntimeError("collect() without a submitted batch")
        done, sent, count = self._inflight.popleft()
        result, error = done.result()
        seconds = {"server": time.perf_counter() - sent}
        if error is not None:
            if _connection_lost(error):
                self._failed()
            raise ServerError(f"{self.url}: {_reason(error)}")
        maps = {name: result.as_numpy(name) for name in MAP_OUTPUTS} if self.maps else {}
        out = RemoteOutput(result.as_numpy("score")[:, 0], result.as_numpy("pred_score")[:, 0],
                           result.as_numpy("pred_label")[:, 0], maps, seconds)
        if len(out.score) != count:
            raise ServerError(f"{self.url}: {count} frames sent, {len(out.score)} scores received")
        return out

    def predictions(self, out: RemoteOutput) -> list[Prediction]:
        """One :class:`Prediction` per frame; ``raw_map`` is empty unless the detector asks for ``maps``."""
        share = {key: value / len(out.score) for key, value in out.seconds.items()}
        empty = np.zeros((0, 0), np.float32)
        return [
            Prediction(
                float(out.score[k]),
                out.maps["raw_map"][k] if self.maps else empty,
                float(out.pred_score[k]) if self.calibrated else None,
                bool(out.pred_label[k]) if self.calibrated else None,
                out.maps["anomaly_map"][k] if self.maps and self.calibrated else None,
                out.maps["pred_mask"][k] if self.maps and self.calibrated else None,
                dict(share),
            )
            for k in range(len(out.score))
        ]

    def predict(self, frames: list[np.ndarray]) -> list[Prediction]:
        """Score frames (each checked and resized here) in one request."""
        self.submit(np.stack([self.prepare(f, f"frames[{k}]") for k, f in enumerate(frames)]))
        return self.predictions(self.collect())

    def close(self) -> None:
        for done, _, _ in self._inflight:
            done.result()
        self._inflight.clear()
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> RemoteDetector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_LOST = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "Socket closed", "failed to connect")


def _reason(exc: BaseException) -> str:
    text = exc.message() if callable(getattr(exc, "message", None)) else str(exc)
    status = exc.status() if callable(getattr(exc, "status", None)) else None
    return f"{status}: {text}" if status and status not in text else text


def _connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` means the server is gone (reconnect), rather than a request it refused."""
    return any(word in _reason(exc) for word in _LOST)


