"""Prometheus metrics of a stream, in a private registry, collected from the dashboard's state at each scrape.

The stream's writer thread never touches a metric: :class:`StreamCollector` turns one
:meth:`~runtime.dashboard.state.DashboardState.snapshot` (and the source's health) into metric families when
``/metrics`` is read.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import accumulate

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from runtime.dashboard.state import DashboardState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class StreamCollector(Collector):
    """The metric families of one stream: ``health()`` gives the source's state (see
    :meth:`runtime.dashboard.app.Dashboard.health`) and ``model`` its labels (``manifest_sha256``, ``plan``,
    ``backend``)."""

    def __init__(self, state: DashboardState, health: Callable[[dict], dict], model: dict[str, str]) -> None:
        self.state, self.health, self.model = state, health, model

    def collect(self) -> Iterator[Metric]:
        snapshot = self.state.snapshot()
        health = self.health(snapshot)
        yield from self._counts(snapshot)
        latency = snapshot["latency"]
        bounds = [str(b) for b in latency["bounds"]] + ["+Inf"]
        yield HistogramMetricFamily(
            "diad_latency_seconds", "Capture-to-verdict latency of scored frames",
            buckets=list(zip(bounds, accumulate(latency["buckets"]), strict=True)), sum_value=latency["sum"])
        yield CounterMetricFamily("diad_dropped_frames_total", "Frames the source gave that newer ones replaced "
                                  "before scoring", value=health["dropped"])
        yield GaugeMetricFamily("diad_source_up", "1 while the source delivers frames, 0 while it reconnects",
                                value=0 if health["state"] == "reconnecting" else 1)
        yield CounterMetricFamily("diad_source_reconnects_total", "Outages of the source that a reconnection ended",
                                  value=health["reconnects"])
        yield CounterMetricFamily("diad_source_missed_frames_total", "Frames lost to source outages (the outage "
                                  "times the frame rate measured before it)", value=health["missed"])
        drift = GaugeMetricFamily("diad_score_drift", "1 when the class's recent scores left calibration's normal "
                                  "range (runtime.dashboard.drift)", labels=["class"])
        for name, report in snapshot["drift"].items():
            drift.add_metric([name], 1 if report["status"] == "drift" else 0)
        yield drift
        info = GaugeMetricFamily("diad_model_info", "The model being run (value 1)", labels=list(self.model))
        info.add_metric(list(self.model.values()), 1)
        yield info

    @staticmethod
    def _counts(snapshot: dict) -> Iterator[Metric]:
        frames = CounterMetricFamily("diad_frames_total", "Frames written (verdicts and errors), by class",
                                     labels=["class"])
        rejects = CounterMetricFamily("diad_rejects_total", "Frames judged anomalous, by class", labels=["class"])
        for name, counts in snapshot["classes"].items():
            frames.add_metric([name], counts["frames"])
            rejects.add_metric([name], counts["rejects"])
        errors = CounterMetricFamily("diad_errors_total", "Frames that gave an error record, by kind",
                                     labels=["kind"])
        for kind, count in sorted(snapshot["errors"].items()):
            errors.add_metric([kind], count)
        yield from (frames, rejects, errors)


def registry(collector: StreamCollector) -> CollectorRegistry:
    """A private registry with only ``collector`` (no process or platform metrics of the default one)."""
    private = CollectorRegistry(auto_describe=False)
    private.register(collector)
    return private


def exposition(private: CollectorRegistry) -> bytes:
    """The registry in Prometheus' text format (:data:`CONTENT_TYPE`)."""
    return generate_latest(private)
