"""Prometheus metrics. Module-level by Prometheus convention: one registry per process."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "tilesight_http_requests_total",
    "HTTP requests by route and status",
    ["method", "route", "status"],
)
LATENCY = Histogram(
    "tilesight_http_request_seconds",
    "HTTP request latency by route",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CACHE = Counter("tilesight_tile_cache_total", "prediction cache lookups", ["result"])
TRITON_LATENCY = Histogram(
    "tilesight_triton_seconds",
    "latency of one Triton inference call",
    ["model"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
QUEUE_DEPTH = Gauge("tilesight_queue_depth", "tasks waiting in each Celery queue", ["queue"])
JOBS = Gauge("tilesight_jobs", "area jobs by state", ["state"])
RATE_LIMITED = Counter("tilesight_rate_limited_total", "requests refused with 429", ["budget"])
