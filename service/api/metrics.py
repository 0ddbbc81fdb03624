"""``/metrics`` in Prometheus format: request latency, jobs by status, queue depth, and stage
durations of finished jobs."""

from __future__ import annotations

import time

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from service.core import crud

router = APIRouter(tags=["health"])


class JobCollector:
    """Reads job counts and stage times from the database at scrape time."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def collect(self):
        by_status = GaugeMetricFamily("shears_jobs", "Jobs by status.", labels=["status"])
        stage_seconds = GaugeMetricFamily(
            "shears_job_stage_seconds_mean",
            "Mean duration of each stage over the last 1000 finished jobs.",
            labels=["stage"],
        )
        depth = GaugeMetricFamily("shears_queue_depth", "Jobs queued and not yet started.")
        with self.app.state.sessions() as session:
            counts = crud.job_counts_by_status(session)
            recent = crud.recent_succeeded_results(session, limit=1000)
        for status in ("queued", "running", "cancelling", "succeeded", "failed", "cancelled"):
            by_status.add_metric([status], counts.get(status, 0))
        depth.add_metric([], counts.get("queued", 0))
        totals: dict[str, list[float]] = {}
        for result in recent:
            for stage, seconds in ((result or {}).get("stage_seconds") or {}).items():
                totals.setdefault(stage, []).append(float(seconds))
        for stage, values in sorted(totals.items()):
            stage_seconds.add_metric([stage], sum(values) / len(values))
        yield from (by_status, depth, stage_seconds)


def install_metrics(app: FastAPI) -> None:
    registry = CollectorRegistry()
    latency = Histogram(
        "shears_http_request_seconds",
        "HTTP request latency.",
        ["method", "route", "status"],
        registry=registry,
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    )
    registry.register(JobCollector(app))
    app.state.metrics_registry = registry

    app.add_middleware(LatencyMiddleware, histogram=latency)


class LatencyMiddleware:
    """Observes each HTTP request's latency by method, route template and status. A plain
    ASGI middleware: ``@app.middleware("http")`` (BaseHTTPMiddleware) wraps every request
    in an extra task and memory streams, which cost more than the poll itself
    (bench/api_load.py)."""

    def __init__(self, app, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        observed = False

        def observe(status: int) -> None:
            path = getattr(scope.get("route"), "path", "unmatched")
            self.histogram.labels(scope["method"], path, str(status)).observe(time.perf_counter() - start)

        async def send_wrapper(message) -> None:
            nonlocal observed
            if message["type"] == "http.response.start" and not observed:
                observed = True  # time to the response head, as before (streams may last long)
                observe(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if not observed:
                observe(500)


@router.get(
    "/metrics", response_class=Response, summary="Prometheus metrics", responses={200: {"content": {"text/plain": {}}}}
)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
