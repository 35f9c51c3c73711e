"""Mean and spread over runs that differ only in their seed.

One run's NDCG@20 is one draw: the seeds of the trained stages move it. The protocol asks
for headline numbers as the mean over at least 3 seeds with their standard deviation; a
number from another machine or commit is then judged by how many standard deviations it
lies from that mean. Input: the funnel reports (`report.json`) of the runs, as
`recfunnel evaluate` writes them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from recfunnel.errors import ConfigError

LIST_METRICS = ("ndcg@20", "recall@20", "ild@20")
POINTWISE = ("auc", "gauc", "logloss", "ece")


def _spread(values: Sequence[float]) -> dict[str, Any]:
    """mean, sample standard deviation (ddof 1; 0 for one run), min, max and the values."""
    array = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(array.mean()),
        "sd": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
        "min": float(array.min()),
        "max": float(array.max()),
        "values": [float(v) for v in array],
    }


def summarize_reports(reports: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """{"runs", "part", "lists": {list: {metric: spread}}, "differences": {"a - b": {metric:
    spread}}, "rank_pointwise": {metric: spread}, "lambda": spread} over `reports` (run name
    -> funnel report), which must score the same part with the same lists."""
    if not reports:
        raise ConfigError("summarize needs at least one run's report")
    parts = {str(r.get("part")) for r in reports.values()}
    if len(parts) != 1:
        raise ConfigError(f"the reports score different parts: {sorted(parts)}")
    names = None
    for run, report in reports.items():
        these = [*report.get("stages", {}), *report.get("baselines", {})]
        if names is None:
            names = these
        elif these != names:
            raise ConfigError(f"{run} scores other lists than the first run: {these}")
    assert names is not None
    rows = {name: {} for name in names}
    for name in names:
        for metric in LIST_METRICS:
            values = []
            for report in reports.values():
                row = report.get("stages", {}).get(name) or report.get("baselines", {})[name]
                if row.get(metric) is not None:
                    values.append(row[metric])
            if len(values) == len(reports):
                rows[name][metric] = _spread(values)
    pointwise = {}
    for metric in POINTWISE:
        values = [r.get("pointwise", {}).get("rank", {}).get(metric) for r in reports.values()]
        if all(v is not None for v in values):
            pointwise[metric] = _spread(values)
    lambdas = [r.get("rerank", {}).get("lambda_mmr") for r in reports.values()]
    return {
        "runs": list(reports),
        "part": parts.pop(),
        "lists": rows,
        "differences": _differences(reports),
        "rank_pointwise": pointwise,
        "lambda": _spread(lambdas) if all(v is not None for v in lambdas) else None,
    }


def _differences(reports: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """{"a - b": {metric: spread}}: each paired difference of the reports' intervals section
    (the mean over users of a - b, one per run) that every report holds, with how many runs'
    95 % intervals lie above 0, below 0, or are exactly 0 (the same lists): "every seed"
    is a count, not an impression."""
    per_run = [r.get("intervals", {}).get("differences", {}) for r in reports.values()]
    out: dict[str, dict[str, Any]] = {}
    for name in per_run[0]:
        for metric in per_run[0][name]:
            entries = [d.get(name, {}).get(metric, {}) for d in per_run]
            values = [e.get("mean") for e in entries]
            if all(v is not None for v in values):
                spread = _spread(values)
                lows, highs = [e.get("low") for e in entries], [e.get("high") for e in entries]
                if all(v is not None for v in (*lows, *highs)):
                    spread["above_zero"] = sum(low > 0 for low in lows)
                    spread["below_zero"] = sum(high < 0 for high in highs)
                    spread["exactly_zero"] = sum(
                        e["mean"] == e["low"] == e["high"] == 0 for e in entries
                    )
                out.setdefault(name, {})[metric] = spread
    return out


def _intervals_cell(entry: Mapping[str, Any] | None) -> str:
    """How the runs' intervals of one difference fall, e.g. "3 above 0" or "1 across 0,
    2 above 0" (blank when the reports carry no intervals)."""
    if not entry or "above_zero" not in entry:
        return ""
    n = len(entry["values"])
    counts = {
        "above 0": entry["above_zero"],
        "below 0": entry["below_zero"],
        "exactly 0": entry["exactly_zero"],
    }
    counts["across 0"] = n - sum(counts.values())
    return ", ".join(f"{count} {where}" for where, count in counts.items() if count)


def _cell(entry: Mapping[str, Any] | None) -> str:
    return "" if not entry else f"{entry['mean']:.4f} ± {entry['sd']:.4f}"


def _signed_cell(entry: Mapping[str, Any] | None) -> str:
    return "" if not entry else f"{entry['mean']:+.4f} ± {entry['sd']:.4f}"


def render_summary(summary: Mapping[str, Any]) -> str:
    """The summary as markdown tables: mean ± standard deviation over the runs."""
    runs = summary["runs"]
    out = [
        f"# Mean ± standard deviation over {len(runs)} runs ({summary['part']})",
        "",
        "Runs: " + ", ".join(str(r) for r in runs),
        "",
        "| list | NDCG@20 | Recall@20 | ILD@20 |",
        "| :--- | ---: | ---: | ---: |",
    ]
    for name, row in summary["lists"].items():
        out.append(f"| {name} | " + " | ".join(_cell(row.get(m)) for m in LIST_METRICS) + " |")
    if summary.get("differences"):
        metrics = ("ndcg@20", "recall@20")
        out += [
            "",
            "| paired difference | NDCG@20 | Recall@20 | runs' NDCG@20 95 % intervals |",
            "| :--- | ---: | ---: | :--- |",
        ]
        for name, row in summary["differences"].items():
            cells = [_signed_cell(row.get(m)) for m in metrics]
            cells.append(_intervals_cell(row.get("ndcg@20")))
            out.append(f"| {name} | " + " | ".join(cells) + " |")
    if summary["rank_pointwise"]:
        out += ["", "| rank, rated pairs | " + " | ".join(POINTWISE) + " |"]
        out += ["| :--- |" + " ---: |" * len(POINTWISE)]
        cells = [_cell(summary["rank_pointwise"].get(m)) for m in POINTWISE]
        out.append("| like head | " + " | ".join(cells) + " |")
    if summary.get("lambda"):
        values = ", ".join(f"{v:g}" for v in summary["lambda"]["values"])
        out += ["", f"Re-rank lambda (chosen on valid per run): {values}"]
    return "\n".join(out) + "\n"


__all__ = ["render_summary", "summarize_reports"]
