"""Prometheus metrics: gauges read from the dashboard's tables at scrape time, request counts.

The gauges come from the database when /metrics is scraped, so any gunicorn worker answers
alike. Request counts are each process's own: they are exported only in prometheus_client's
multi-process mode (PROMETHEUS_MULTIPROC_DIR, set by dashboard/gunicorn_conf.py), where every
worker writes them to files that a scrape adds up; without it, two workers would each show
their own share and scrapes would disagree.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache

from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from dashboard.selectors import metrics as readings

logger = logging.getLogger(__name__)

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# URL names, not paths: a path carries ids and names without bound, a URL name does not.
UNMATCHED = "unmatched"

REQUESTS = Counter(
    "dashboard_http_requests",
    "Requests answered, by URL name, method and status code.",
    ["view", "method", "status"],
    registry=None,
)
DURATION = Histogram(
    "dashboard_http_request_duration_seconds",
    "Time to answer a request, by URL name.",
    ["view"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=None,
)


def multiprocess_mode() -> bool:
    """Say whether request counts go to PROMETHEUS_MULTIPROC_DIR (gunicorn's config sets it)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class DashboardCollector(Collector):
    """Read the gauges from the database at each scrape: a few queries, whatever the process."""

    def describe(self) -> Iterable[Metric]:
        # Registering must not query the database; the names are checked by the tests instead.
        return ()

    def collect(self) -> Iterator[Metric]:
        parts = GaugeMetricFamily(
            "dashboard_metrics_part_ok",
            "1 when this part of the scrape was read, 0 when it failed (see the server's log).",
            labels=["part"],
        )
        for part, families in (
            ("environments", _environment_families),
            ("actions", _action_families),
            ("queue", _queue_families),
            ("workers", _worker_families),
        ):
            try:
                found = list(families())
            except Exception:
                # One broken part (a locked table, a missing one) never hides the others.
                logger.exception("metrics: could not read %s", part)
                parts.add_metric([part], 0)
                continue
            parts.add_metric([part], 1)
            yield from found
        yield parts


def _environment_families() -> Iterator[Metric]:
    read = readings.environment_readings()
    config = GaugeMetricFamily(
        "dashboard_config_ok", "1 when the dashboard's config file reads, 0 when it does not."
    )
    config.add_metric([], 0 if read.config_error else 1)
    yield config
    labels = ["environment", "project", "fleet"]
    state = GaugeMetricFamily(
        "dashboard_environment_state",
        "1 for the state of the environment's latest snapshot, 0 for every other state.",
        labels=[*labels, "state"],
    )
    pending = GaugeMetricFamily(
        "dashboard_environment_pending_revisions",
        "Revisions between the environment's heads and the script directory's, as last read.",
        labels=labels,
    )
    age = GaugeMetricFamily(
        "dashboard_environment_last_read_age_seconds",
        "Seconds since the environment's latest snapshot (a read, successful or not).",
        labels=labels,
    )
    differences = GaugeMetricFamily(
        "dashboard_environment_schema_differences",
        "Differences from the reference schema that the latest conclusive drift check found.",
        labels=labels,
    )
    now = timezone.now()
    for env in read.environments:
        values = [env.environment, env.project, env.fleet]
        for name in readings.STATES:
            state.add_metric([*values, name], 1 if name == env.state else 0)
        if env.pending is not None:
            pending.add_metric(values, env.pending)
        if env.read_at is not None:
            age.add_metric(values, max(0.0, (now - env.read_at).total_seconds()))
        if env.schema_differences is not None:
            differences.add_metric(values, env.schema_differences)
    yield from (state, pending, age, differences)


def _action_families() -> Iterator[Metric]:
    actions = GaugeMetricFamily(
        "dashboard_actions", "Actions in each status, finished ones included.", labels=["status"]
    )
    for status, n in readings.action_counts().items():
        actions.add_metric([status], n)
    yield actions


def _queue_families() -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "dashboard_queue_depth",
        "Tasks due that no worker has claimed yet.",
        value=readings.queue_depth(),
    )


def _worker_families() -> Iterator[Metric]:
    beats = GaugeMetricFamily(
        "dashboard_worker_heartbeat_age_seconds",
        "Seconds since each worker (host:pid) last beat; a cleanly stopped worker has none.",
        labels=["worker"],
    )
    now = timezone.now()
    for name, seen_at in readings.worker_beats():
        beats.add_metric([name], max(0.0, (now - seen_at).total_seconds()))
    yield beats


@lru_cache(maxsize=1)
def registry() -> CollectorRegistry:
    """Return this process's registry: the database gauges, and the request counts if shared."""
    found = CollectorRegistry()
    if multiprocess_mode():
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(found)  # type: ignore[no-untyped-call]
    found.register(DashboardCollector())
    return found


class RequestMetricsMiddleware:
    """Count every request by URL name, method and status, and time it."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        view = match.view_name if match is not None and match.view_name else UNMATCHED
        method = request.method if request.method in METHODS else "other"
        REQUESTS.labels(view, method, str(response.status_code)).inc()
        DURATION.labels(view).observe(time.perf_counter() - started)
        return response
