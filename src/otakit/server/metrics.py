"""The server's Prometheus metrics: one registry per app, a pure ASGI middleware that counts requests
by route template, and the byte counters of uploads and downloads.

The middleware labels a request with the *template* of the route that answered it (``/otafiles/{path}``,
``/api/v1/devices/{device_id}``), never the raw path, so that the number of series stays bounded: a
request that no route matched is ``unmatched``, a mounted app's is ``<mount>/{path}``, a method outside
HTTP's own is ``other``. It also puts the app's ``Metrics`` in the request's scope (``current``), where the
upload and download code finds it to count their bytes.

The fleet's gauges (devices, rollouts by state) are read at scrape time (``routes/metrics.py``) and
handed to ``Metrics.render``: when the database does not answer they are left out, and
``otakit_scrape_errors_total`` grows.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "BUCKETS",
    "CONTENT_TYPE",
    "SCOPE_KEY",
    "UNMATCHED",
    "Fleet",
    "Metrics",
    "MetricsMiddleware",
    "count_received",
    "count_sent",
    "current",
]

# Latency buckets for a fast API: from half a millisecond to ten seconds.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The classic text format (0.0.4), which every Prometheus reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNMATCHED = "unmatched"
_BOUNDS = [*(str(bound) for bound in BUCKETS), "+Inf"]  # as prometheus-client writes them
_REQUESTS, _REQUESTS_HELP = "otakit_http_requests", "HTTP requests by route template, method and status"
_LATENCY = "otakit_http_request_duration_seconds"
_LATENCY_HELP = "time from a request's arrival to the end of its answer, by route template and method"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"})

# The scope's key for the app's ``Metrics`` (a context variable cost some 1.5 us a request).
SCOPE_KEY = "otakit.metrics"


def current(scope: Scope) -> Metrics | None:
    """The metrics of the app that handles the request of ``scope``, or None when metrics are off."""
    metrics: Metrics | None = scope.get(SCOPE_KEY)
    return metrics


@dataclass(frozen=True)
class Fleet:
    """The fleet's state at a scrape: devices (all, online, pending) and rollouts by state."""

    devices: int
    online: int
    pending: int
    rollouts: dict[str, int] = field(default_factory=dict)


class _FleetCollector(Collector):
    """Yields the ``Fleet`` that ``Metrics.render`` is handed, nothing without one."""

    def __init__(self) -> None:
        self.fleet: Fleet | None = None

    def describe(self) -> list[Metric]:
        return []  # read per scrape: nothing to check for clashes at registration

    def collect(self) -> Iterator[Metric]:
        fleet = self.fleet
        if fleet is None:
            return
        for name, help_text, value in (
            ("otakit_devices", "enrolled devices", fleet.devices),
            ("otakit_devices_online", "devices seen within 3 heartbeat intervals", fleet.online),
            ("otakit_devices_pending", "devices waiting to be accepted (manual approval)", fleet.pending),
        ):
            yield GaugeMetricFamily(name, help_text, value=value)
        rollouts = GaugeMetricFamily("otakit_rollouts", "rollouts by state", labels=["state"])
        for state, count in sorted(fleet.rollouts.items()):
            rollouts.add_metric([state], count)
        yield rollouts


class _RequestCollector(Collector):
    """The request counter and the latency histogram, kept as plain numbers per (route, method, status)
    and turned into Prometheus families at scrape time: prometheus-client's own Counter and Histogram
    take a lock per increment and cost about a microsecond a request more. Only the event loop's
    thread updates and reads them."""

    def __init__(self) -> None:
        # (route, method, status) -> [count, sum of seconds, one count per bucket and +Inf]
        self.stats: dict[tuple[str, str, int], list[float]] = {}

    def describe(self) -> list[Metric]:
        return [
            CounterMetricFamily(_REQUESTS, _REQUESTS_HELP, labels=["route", "method", "status"]),
            HistogramMetricFamily(_LATENCY, _LATENCY_HELP, labels=["route", "method"]),
        ]

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(_REQUESTS, _REQUESTS_HELP, labels=["route", "method", "status"])
        by_route: dict[tuple[str, str], list[float]] = {}
        for (route, method, status), stat in sorted(self.stats.items()):
            requests.add_metric([route, method, str(status)], stat[0])
            total = by_route.setdefault((route, method), [0.0] * len(stat))
            for i, number in enumerate(stat):
                total[i] += number
        yield requests
        latency = HistogramMetricFamily(_LATENCY, _LATENCY_HELP, labels=["route", "method"])
        for (route, method), total in by_route.items():
            cumulative, buckets = 0.0, []
            for bound, number in zip(_BOUNDS, total[2:], strict=True):
                cumulative += number
                buckets.append((bound, cumulative))
            latency.add_metric([route, method], buckets, sum_value=total[1])
        yield latency


class Metrics:
    """One app's registry and instruments; nothing is global, so two apps in one process do not clash."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        self._requests = _RequestCollector()
        self.registry.register(self._requests)
        self.upload_bytes = Counter(
            "otakit_upload_bytes",
            "upload request bytes received (PUT /upload, the console)",
            registry=self.registry,
        )
        self.download_bytes = Counter(
            "otakit_download_bytes",
            "package file bytes sent (/otafiles, Range included)",
            registry=self.registry,
        )
        self.deltas = Counter(
            "otakit_deltas",
            "deltas this process made: kept (made) or not worth keeping (none)",
            ["result"],
            registry=self.registry,
        )
        self.scrape_errors = Counter(
            "otakit_scrape_errors",
            "scrapes whose fleet gauges were left out (the database failed or was too slow)",
            registry=self.registry,
        )
        self._fleet = _FleetCollector()
        self.registry.register(self._fleet)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one request and its latency."""
        stat = self._requests.stats.get((route, method, status))
        if stat is None:
            stat = self._requests.stats[(route, method, status)] = [0.0] * (len(BUCKETS) + 3)
        stat[0] += 1
        stat[1] += seconds
        stat[2 + bisect_left(BUCKETS, seconds)] += 1

    def render(self, fleet: Fleet | None) -> bytes:
        """The text exposition, with ``fleet``'s gauges when there is one."""
        self._fleet.fleet = fleet  # no await until it is cleared: a concurrent scrape cannot see it
        try:
            return generate_latest(self.registry)
        finally:
            self._fleet.fleet = None


class MetricsMiddleware:
    """Counts every HTTP request by route template, method and status, with its latency."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Callable[[], list[Any]]) -> None:
        self.app = app
        self.metrics = metrics
        self._routes = routes  # the app's routes, for the endpoints of plain Starlette routes (/docs)
        self._endpoints: dict[object, str] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        root = scope.get("root_path", "")
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        scope[SCOPE_KEY] = self.metrics
        try:
            await self.app(scope, receive, sending)
        finally:
            method = scope["method"]
            self.metrics.observe(
                self._template(scope, root),
                method if method in _METHODS else "other",
                status or 500,  # no answer started: the error middleware outside answers 500
                time.perf_counter() - start,
            )

    def _template(self, scope: Scope, root: str) -> str:
        # After routing, FastAPI's routes (also those of included routers) are in scope["route"]; a
        # mount leaves none, but its prefix in root_path; a plain Starlette route only its endpoint.
        mounted = scope.get("root_path", "")
        prefix = mounted[len(root) :] if mounted != root and mounted.startswith(root) else ""
        route = scope.get("route")
        path = getattr(route, "path_format", None) if route is not None else None
        if isinstance(path, str):
            return prefix + path
        if prefix:
            return prefix + "/{path}"
        endpoint = scope.get("endpoint")
        if endpoint is None:
            return UNMATCHED
        if self._endpoints is None:
            self._endpoints = {
                getattr(r, "endpoint", None): r.path_format
                for r in self._routes()
                if isinstance(getattr(r, "path_format", None), str)
            }
        return self._endpoints.get(endpoint, UNMATCHED)


def count_received(scope: Scope, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``chunks`` of an upload's body, counted as they are read (as they are when metrics are off)."""
    metrics = current(scope)
    if metrics is None:
        return chunks
    return _counting(chunks, metrics.upload_bytes)


async def _counting(chunks: AsyncIterator[bytes], counter: Counter) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        counter.inc(len(chunk))
        yield chunk


def count_sent(scope: Scope, send: Send) -> Send:
    """``send``, counting the body bytes of a download once each message is sent."""
    metrics = current(scope)
    if metrics is None:
        return send
    counter = metrics.download_bytes

    async def sending(message: Message) -> None:
        await send(message)
        if message["type"] == "http.response.body":
            counter.inc(len(message.get("body", b"")))

    return sending
