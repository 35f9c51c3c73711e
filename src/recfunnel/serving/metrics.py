"""Request counts and latency percentiles of the service, in the Prometheus text format.

    metrics.observe_request("GET", "/health", 200, seconds)
    metrics.observe_stage("recall", seconds)
    metrics.render()   # text for GET /metrics

Percentiles come from the last WINDOW observations of each series (a bounded window, so
memory stays flat however long the server runs); counts and sums cover every request since
start. Series are keyed by the route *template* (/users/{user_id}/recommendations), never by
the raw path, so their number stays bounded too.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field

WINDOW = 10_000  # latest observations per series that the percentiles are computed over
QUANTILES = (0.5, 0.99)


@dataclass
class Series:
    """One latency series: a total count and sum, and a window of recent values (seconds)."""

    count: int = 0
    total: float = 0.0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        self.recent.append(seconds)

    def quantile(self, q: float) -> float:
        """Nearest-rank quantile of the window (NaN when empty)."""
        values = sorted(self.recent)
        if not values:
            return math.nan
        return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


def _labels(**labels: str) -> str:
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return ",".join(f'{k}="{escape(v)}"' for k, v in labels.items())


def _number(value: float) -> str:
    return "NaN" if math.isnan(value) else repr(float(value))


class Metrics:
    """Thread-safe counters and latency windows per endpoint and per funnel stage."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, int], int] = {}
        self._requests: dict[tuple[str, str], Series] = {}
        self._stages: dict[str, Series] = {}

    def observe_request(self, method: str, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (method, endpoint, status)
            self._counts[key] = self._counts.get(key, 0) + 1
            self._requests.setdefault((method, endpoint), Series()).add(seconds)

    def observe_stage(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._stages.setdefault(stage, Series()).add(seconds)

    def render(self) -> str:
        """The Prometheus text exposition (version 0.0.4) of every series."""
        with self._lock:
            counts = dict(self._counts)
            requests = {k: (s.count, s.total, list(s.recent)) for k, s in self._requests.items()}
            stages = {k: (s.count, s.total, list(s.recent)) for k, s in self._stages.items()}
        lines = [
            "# HELP recfunnel_http_requests_total HTTP requests by method, endpoint and status.",
            "# TYPE recfunnel_http_requests_total counter",
        ]
        for (method, endpoint, status), n in sorted(counts.items()):
            labels = _labels(method=method, endpoint=endpoint, status=str(status))
            lines.append(f"recfunnel_http_requests_total{{{labels}}} {n}")
        lines += [
            "# HELP recfunnel_http_request_duration_seconds Request latency (quantiles over "
            f"the last {WINDOW} requests of each endpoint).",
            "# TYPE recfunnel_http_request_duration_seconds summary",
        ]
        for (method, endpoint), data in sorted(requests.items()):
            lines += _summary(
                "recfunnel_http_request_duration_seconds",
                {"method": method, "endpoint": endpoint},
                *data,
            )
        lines += [
            "# HELP recfunnel_stage_duration_seconds Funnel component latency per request "
            f"(quantiles over the last {WINDOW} calls of each component).",
            "# TYPE recfunnel_stage_duration_seconds summary",
        ]
        for stage, data in sorted(stages.items()):
            lines += _summary("recfunnel_stage_duration_seconds", {"stage": stage}, *data)
        return "\n".join(lines) + "\n"


def _summary(
    name: str, labels: dict[str, str], count: int, total: float, recent: list[float]
) -> list[str]:
    series = Series(count, total, deque(recent, maxlen=WINDOW))
    out = [
        f"{name}{{{_labels(**labels, quantile=str(q))}}} {_number(series.quantile(q))}"
        for q in QUANTILES
    ]
    out.append(f"{name}_count{{{_labels(**labels)}}} {count}")
    out.append(f"{name}_sum{{{_labels(**labels)}}} {_number(total)}")
    return out
