"""The dashboard of one stream: its state, its pictures, its metrics and its HTTP server, started together."""
from __future__ import annotations

import json
import logging
import threading
import time
from typing import TYPE_CHECKING

import numpy as np

from runtime.dashboard.live import LiveView, Render
from runtime.dashboard.metrics import CONTENT_TYPE, StreamCollector, exposition, registry
from runtime.dashboard.server import MAX_VIEWERS, Address, DashboardHTTPServer
from runtime.dashboard.state import DashboardState, jsonable
from runtime.detector import FrameScorer, Prediction
from runtime.frames import Frame, Source
from runtime.manifest import MANIFEST, Thresholds, sha256
from runtime.schedule import plan_label

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger("runtime.dashboard")


def model_info(scorer: FrameScorer, backend: str) -> dict[str, str]:
    """The model's labels: ``manifest_sha256`` (a served model's, or the local folder's manifest.json), ``plan``
    and ``backend``."""
    digest = getattr(scorer, "manifest_sha256", None)
    manifest = getattr(scorer, "manifest", None)
    if digest is None and manifest is not None:
        digest = sha256(manifest.root / MANIFEST)
    summary = scorer.summary
    return {"manifest_sha256": digest or "unknown", "plan": plan_label(summary["steps"], summary["start_t"]),
            "backend": backend}


class Dashboard:
    """Serves the live page, ``/api/state`` and ``/metrics`` of a stream at ``address`` until :meth:`close`.

    The stream's writer thread calls :meth:`observe` once per record; everything else runs in the dashboard's own
    daemon threads (the HTTP server's and the live encoder's). ``render`` draws a frame's annotated picture.
    """

    def __init__(self, address: Address, *, thresholds: Thresholds, model: dict[str, str], source: Source,
                 render: Render) -> None:
        self.address, self.model, self.source = address, model, source
        self.state = DashboardState(thresholds)
        self.live = LiveView(self.state, render)
        self.closing = threading.Event()
        self.viewers = threading.BoundedSemaphore(MAX_VIEWERS)
        self.metrics_type = CONTENT_TYPE
        self._registry = registry(StreamCollector(self.state, self.health, model))
        self._failed = False
        try:
            self.server = DashboardHTTPServer(address, self)
        except BaseException:
            self.live.close()
            raise
        self.address = Address(address.host, self.server.server_address[1], address.token)
        self._thread = threading.Thread(target=self.server.serve_forever, name="dashboard server", daemon=True)
        self._thread.start()
        needs = f" (token required: Authorization: Bearer, or open {self.url}?token=...)" if address.token else ""
        log.info("dashboard on %s%s", self.url, needs)

    @property
    def url(self) -> str:
        return self.address.url

    def observe(self, record: dict, frame: Frame, prediction: Prediction | None,
                picture: np.ndarray | None = None) -> None:
        """Take a written record (see :meth:`DashboardState.observe`); a failure here never reaches the stream."""
        try:
            self.state.observe(record, frame, prediction, picture)
        except Exception as exc:  # noqa: BLE001 (the page may go wrong; the stream must not)
            if not self._failed:
                log.warning("dashboard: cannot take frame %s (%s: %s)", record.get("frame"), type(exc).__name__, exc)
                self._failed = True

    def health(self, snapshot: dict) -> dict:
        """The source's state for the page and the metrics: ``state`` (``connected`` or ``reconnecting`` for a
        camera or URL, ``reading`` for files and the synthetic feed), ``since``, ``attempts``, ``reconnects``,
        ``missed`` (frames lost to outages), ``fps`` (measured while connected), ``dropped`` (frames replaced by
        newer ones before scoring) and ``skipped`` (discarded by ``--max-fps``)."""
        skipped = self.source.skipped
        out = {"name": self.source.name, "live": self.source.live, "state": "reading", "since": None, "attempts": 0,
               "reconnects": 0, "missed": 0, "fps": None, "skipped": skipped,
               "dropped": max(snapshot["gaps"] - skipped, 0)}
        health = getattr(self.source, "health", None)
        if health is not None:
            now = health.snapshot()
            out.update({key: now[key] for key in ("since", "attempts", "reconnects", "missed", "fps")})
            out["state"] = "connected" if now["connected"] else "reconnecting"
        return out

    def state_json(self) -> bytes:
        """``/api/state``: :meth:`DashboardState.snapshot` with the ``source`` (:meth:`health`), the ``model``
        and the server's ``time`` (seconds since the epoch)."""
        snapshot = self.state.snapshot()
        snapshot.update({"source": self.health(snapshot), "model": self.model, "time": time.time()})
        return json.dumps(jsonable(snapshot), allow_nan=False).encode()

    def metrics(self) -> bytes:
        """``/metrics`` in Prometheus' text format."""
        return exposition(self._registry)

    def close(self) -> None:
        """Stop serving (live views end within a keep-alive interval) and stop the encoder."""
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()
        self.live.close()
        self._thread.join(timeout=5.0)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
