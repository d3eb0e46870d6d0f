"""The line's screen: a live page beside ``python -m runtime.stream --dashboard HOST:PORT``, and Prometheus metrics.

One page served by the runtime itself (no build step, no CDN): the annotated frames as they are scored, counters
per class, frames/s and latency percentiles over the last minute, the last rejects with their heatmaps, each
class's score drift against calibration, the source's health and the model. ``/metrics`` serves the same numbers
to Prometheus (``prometheus-client``, the ``runtime`` extra). See ``docs/dashboard.md``.
"""
from runtime.dashboard.app import Dashboard, model_info
from runtime.dashboard.server import TOKEN_ENV, Address, DashboardError, dashboard_address

__all__ = ["TOKEN_ENV", "Address", "Dashboard", "DashboardError", "dashboard_address", "model_info"]
