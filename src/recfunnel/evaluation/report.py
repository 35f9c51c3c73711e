"""The funnel report as markdown and PNG plots, from the plain dict the evaluation writes.

The input is JSON-able data (as loaded from `metrics.json`); nothing here trains or scores.
Every section but "stages" is optional and is skipped when absent or empty:

    {
      "title": str,
      "part": "test",                      # the evaluated part
      "history": "known",
      "users": {"warm": int, "cold": int},  # "return" instead of "warm": returning users
      "stages": {                          # required; recall, prerank, rank, rerank
        "<stage>": {
          "candidates": int,               # length of the stage's output list
          "ndcg@20": float, "recall@20": float, "precision@20": float, "hit_rate@20": float,
          "recall@<candidates>": float,    # e.g. "recall@200": recall at the stage's own cut
          "retention": float,              # share of recall's liked test hits still kept, 0..1
          "latency_ms_per_user": float,
          "ild@20": float,                 # optional
        },
      },
      "cold": {"<stage>": {...same keys as a stage...}},
      "pointwise": {"<stage>": {"auc": float, "gauc": float, "logloss": float, "ece": float,
                                "reliability": {"count": [...], "mean_prob": [...],
                                                "positive_rate": [...]}}},  # one per bin
      "prerank_target": {"pairs", "positive_share", "auc", "gauc", "logloss", "ece",
                         "reliability"},  # on recall's candidates
      "baselines": {"<name>": {"ndcg@20": float, "recall@20": float, "precision@20": float,
                               "hit_rate@20": float, "ild@20": float}},
      "lambda_sweep": [{"lambda": float, "ndcg@20": float, "ild@20": float,
                        "precision@20": float}, ...],
      "rerank": {"method": "mmr", "lambda_mmr": float, "similarity": "genre"},
      "rerank_sweeps": {"mmr": [...rows like lambda_sweep...], "dpp": [...]},
      "training": {"<stage>": {"metric": str, "best_epoch": int, "best_metric": float,
                               "seconds": float,
                               "epochs": [{"epoch": int, "loss": float, "<metric>": float,
                                           "seconds": float}, ...]}},
      "timing": {"<name>": float},         # seconds, free-form
      "intervals": {"draws": int, "seed": int,
                    "best_baseline": str,    # optional: the single model the final list
                                             # is judged against ("rerank - <it>")
                    "lists": {"<list>": {"ndcg@20": {"mean", "low", "high"}, ...}},
                    "differences": {"<a> - <b>": {"ndcg@20": {"mean", "low", "high"}, ...}}},
    }

Stages are shown in funnel order (recall, prerank, rank, rerank); any other stage name
follows in the order the dict gives it. A missing or non-numeric value prints as a blank
cell and is left out of the plots.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

# Figure (not pyplot) keeps matplotlib's global backend and figure registry out of it:
# savefig picks the Agg canvas for PNG by itself, so this is safe on a headless machine.
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from recfunnel.atomic import write_atomic

__all__ = ["STAGE_ORDER", "render_markdown", "write_plots"]

STAGE_ORDER = ("recall", "prerank", "rank", "rerank")

# (header, key, decimals) of the end-to-end and cold tables; "recall@K" is resolved per row
# to "recall@<candidates>".
_LIST_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("candidates", "candidates", 0),
    ("Recall@K", "recall@K", 4),
    ("NDCG@20", "ndcg@20", 4),
    ("Recall@20", "recall@20", 4),
    ("Precision@20", "precision@20", 4),
    ("HitRate@20", "hit_rate@20", 4),
    ("ILD@20", "ild@20", 4),
    ("retention", "retention", 4),
    ("latency ms/user", "latency_ms_per_user", 2),
)
_POINTWISE_COLUMNS = (
    ("AUC", "auc", 4),
    ("GAUC", "gauc", 4),
    ("LogLoss", "logloss", 4),
    ("ECE", "ece", 4),
)
_SWEEP_COLUMNS = (
    ("NDCG@20", "ndcg@20", 4),
    ("ILD@20", "ild@20", 4),
    ("Precision@20", "precision@20", 4),
)

# Plot file name -> (alt text, whether the report has the data for it).
_PLOTS: dict[str, tuple[str, Callable[[Mapping[str, Any]], bool]]] = {
    "funnel.png": ("funnel", lambda r: bool(_stages(r))),
    "lambda_sweep.png": ("lambda sweep", lambda r: bool(_sweep_points(r))),
    "training_curves.png": ("training curves", lambda r: bool(_training(r))),
    "reliability.png": ("reliability diagram", lambda r: bool(_reliability(r))),
}


# ----------------------------------------------------------------------------- data access


def _mapping(value: object) -> Mapping[str, Any]:
    """`value` if it is a dict, else an empty one: absent or null sections read as empty."""
    return value if isinstance(value, Mapping) else {}


def _number(value: object) -> float | None:
    """A finite-or-nan float from an int/float; None for anything else (bools, text, null)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _ordered(names: Iterable[str]) -> list[str]:
    """Funnel stages in funnel order, then any others in their given order."""
    names = list(names)
    return [s for s in STAGE_ORDER if s in names] + [s for s in names if s not in STAGE_ORDER]


def _stages(report: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """report["stages"] in funnel order; raises ValueError when it is missing or empty."""
    stages = report.get("stages")
    if not isinstance(stages, Mapping) or not stages:
        raise ValueError(
            'funnel report has no "stages": expected a non-empty dict of stage name -> '
            f"metrics (recall, prerank, rank, rerank); got {type(stages).__name__}"
            + (" (empty)" if isinstance(stages, Mapping) else "")
        )
    return {s: _mapping(stages[s]) for s in _ordered(stages)}


def _list_value(row: Mapping[str, Any], key: str) -> float | None:
    if key == "recall@K":
        k = _number(row.get("candidates"))
        return _number(row.get(f"recall@{int(k)}")) if k is not None and math.isfinite(k) else None
    return _number(row.get(key))


def _sweep_points(report: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Sweep entries that have a lambda, sorted by it."""
    sweep = report.get("lambda_sweep")
    if not isinstance(sweep, Sequence) or isinstance(sweep, str):
        return []
    points = [p for p in sweep if isinstance(p, Mapping) and _number(p.get("lambda")) is not None]
    return sorted(points, key=lambda p: _number(p["lambda"]))


def _default_lambda(report: Mapping[str, Any]) -> float | None:
    return _number(_mapping(report.get("rerank")).get("lambda_mmr"))


def _is_default(lam: float | None, default: float | None) -> bool:
    return lam is not None and default is not None and math.isclose(lam, default, abs_tol=1e-9)


def _reliability(report: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Label -> reliability bins, for each probability the report calibrates: the rank
    model's like head on the rated pairs, pre-rank on its own target."""
    sources = {
        "rank P(liked | rated), rated pairs": _mapping(
            _mapping(_mapping(report.get("pointwise")).get("rank")).get("reliability")
        ),
        "pre-rank P(liked later), recall candidates": _mapping(
            _mapping(report.get("prerank_target")).get("reliability")
        ),
    }
    return {
        label: bins
        for label, bins in sources.items()
        if all(isinstance(bins.get(k), Sequence) for k in ("count", "mean_prob", "positive_rate"))
    }


def _training(report: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Trained stages (funnel order) that have a non-empty epoch log."""
    training = _mapping(report.get("training"))
    out = {}
    for stage in _ordered(training):
        entry = _mapping(training[stage])
        epochs = entry.get("epochs")
        if isinstance(epochs, Sequence) and any(isinstance(e, Mapping) for e in epochs):
            out[stage] = entry
    return out


# ----------------------------------------------------------------------------- markdown


def _fmt(value: float | None, decimals: int) -> str:
    """Blank for a missing value; counts (0 decimals) as integers."""
    if value is None:
        return ""
    if decimals == 0 and math.isfinite(value):
        return str(round(value))
    return f"{value:.{decimals}f}"


def _fmt_lambda(value: float | None) -> str:
    # A setting, not a measurement: print it as written (0.5, not 0.5000).
    return "" if value is None else f"{value:g}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 1) -> str:
    """A GitHub-flavoured markdown table; the first `text_columns` left-aligned, numbers right."""
    align = [":---"] * text_columns + ["---:"] * (len(header) - text_columns)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _list_table(rows: Iterable[tuple[str, Mapping[str, Any]]], first: str) -> str:
    """One row per (name, metrics) list, stage or baseline, with the `_LIST_COLUMNS`."""
    body = [
        [name] + [_fmt(_list_value(row, key), d) for _, key, d in _LIST_COLUMNS]
        for name, row in rows
    ]
    return _md_table([first] + [h for h, _, _ in _LIST_COLUMNS], body)


def _how_to_read(report: Mapping[str, Any]) -> str:
    users = _mapping(report.get("users"))
    warm, cold = _number(users.get("warm")), _number(users.get("cold"))
    back = _number(users.get("return"))
    rerank = _mapping(report.get("rerank"))
    lam = _default_lambda(report)
    who = []
    if warm is not None:
        who.append(f"{round(warm):,} warm users")
    if back is not None:
        who.append(f"{round(back):,} warm users who came back after a pause")
    if cold is not None:
        who.append(f"{round(cold):,} cold users (reported separately)")
    on = f"the {report.get('part', 'test')} part"
    if "history" in report:
        on += f" (history: {report['history']})"
    if who:
        on += " over " + " and ".join(who)
    names = {"ild": "the ILD greedy", "mmr": "MMR", "dpp": "a DPP"}
    mmr = names.get(str(rerank.get("method", "mmr")), str(rerank.get("method")))
    if lam is not None:
        mmr += f" with lambda = {_fmt_lambda(lam)}"
    if "similarity" in rerank:
        mmr += f" and {rerank['similarity']} similarity"
    return (
        "Each stage narrows every user's candidate list: recall retrieves from the whole "
        "catalogue, pre-rank and rank cut the list down, and re-rank reorders the final list "
        f"for diversity ({mmr}). Each row scores that stage's output list as if it were the "
        f"final recommendation, on {on}. Recall@K is recall at the stage's own list length "
        "(K = candidates); ILD@20 is intra-list diversity (higher is more varied); retention "
        "is the share of recall's liked test hits that the stage still keeps; latency is the "
        "stage's wall time per user. Baselines are single models scored the same way. "
        "A blank cell is a value the run did not measure."
    )


def _fmt_interval(entry: object, signed: bool = False) -> str:
    """ "0.2437 [0.2301, 0.2570]" from {"mean", "low", "high"} (blank when absent)."""
    e = _mapping(entry)
    mean, low, high = (_number(e.get(k)) for k in ("mean", "low", "high"))
    if mean is None or low is None or high is None:
        return ""
    sign = "+" if signed else ""
    return f"{mean:{sign}.4f} [{low:{sign}.4f}, {high:{sign}.4f}]"


def _intervals_section(intervals: Mapping[str, Any]) -> list[str]:
    """Markdown lines: each list's NDCG@20 and Recall@20 with 95 % intervals, then the paired
    differences (an interval that excludes 0 is a difference the users' spread does not
    explain)."""
    lists = _mapping(intervals.get("lists"))
    if not lists:
        return []
    metrics = ("ndcg@20", "recall@20")
    draws = intervals.get("draws", "")
    body = [
        [str(n)] + [_fmt_interval(_mapping(v).get(m)) for m in metrics] for n, v in lists.items()
    ]
    out = [
        "## Confidence intervals",
        "",
        f"Paired bootstrap over the evaluated users ({draws} draws, seed "
        f"{intervals.get('seed', '')}): the mean and its 95 % interval. A difference whose "
        "interval excludes 0 is not explained by which users happen to be evaluated.",
        "",
        _md_table(["list", "NDCG@20", "Recall@20"], body),
        "",
    ]
    differences = _mapping(intervals.get("differences"))
    if differences:
        body = [
            [str(n)] + [_fmt_interval(_mapping(v).get(m), signed=True) for m in metrics]
            for n, v in differences.items()
        ]
        out += [_md_table(["difference", "NDCG@20", "Recall@20"], body), ""]
    return out


# (difference key, what it asks) of the verdicts section, in funnel order.
_VERDICTS = (
    ("prerank - recall", "pre-rank over recall"),
    ("rank - prerank", "rank over pre-rank"),
    ("rerank - rank", "re-rank over rank"),
)


def _verdict(entry: object, gains: str = "gains {}: it earns its place") -> str | None:
    """One paired NDCG@20 difference {"mean", "low", "high"} read as a verdict; `gains`
    phrases an interval above 0 ({} is the interval)."""
    e = _mapping(entry)
    mean, low, high = (_number(e.get(k)) for k in ("mean", "low", "high"))
    if mean is None or low is None or high is None:
        return None
    interval = _fmt_interval(e, signed=True)
    if mean == low == high == 0:
        return "0 for every user: it hands on the top 20 it was given"
    if low > 0:
        return gains.format(interval)
    if high < 0:
        return f"loses {interval}"
    return f"a tie, {interval}: no difference the users' spread can tell from noise"


def _verdicts_section(report: Mapping[str, Any]) -> list[str]:
    """Markdown lines: what each stage adds to the list it is handed, and whether the final
    list beats the report's best single model, from the paired NDCG@20 intervals; re-rank's
    line also gives the genre ILD@20 it buys."""
    intervals = _mapping(report.get("intervals"))
    differences = _mapping(intervals.get("differences"))
    stages = _stages(report)
    lines = []
    for key, question in _VERDICTS:
        verdict = _verdict(_mapping(differences.get(key)).get("ndcg@20"))
        if verdict is None:
            continue
        if key == "rerank - rank":
            before = _list_value(_mapping(stages.get("rank")), "ild@20")
            after = _list_value(_mapping(stages.get("rerank")), "ild@20")
            if before and after is not None:
                verdict += (
                    f", for genre ILD@20 {before:.4f} -> {after:.4f} "
                    f"({100 * (after / before - 1):+.1f} %), the diversity it is there for"
                )
        lines.append(f"- **{question}**: {verdict}.")
    best = intervals.get("best_baseline")
    final = _verdict(_mapping(differences.get(f"rerank - {best}")).get("ndcg@20"), "beats it by {}")
    if best and final is not None:
        lines.append(f"- **the final list over {best}**, the best single model here: {final}.")
    if not lines:
        return []
    return [
        "## What each stage adds",
        "",
        "Each stage's list against the list it was handed, NDCG@20, paired 95 % intervals "
        "(the next section): a stage earns its place when the interval lies above 0.",
        "",
        *lines,
        "",
    ]


def render_markdown(report: dict) -> str:
    """The whole report as markdown: title, how to read it, tables, links to the plots.

    Raises ValueError when report["stages"] is missing or empty; every other section is
    optional. Plot links assume the PNGs from `write_plots` sit beside the markdown file.
    """
    stages = _stages(report)
    out = [f"# {report.get('title') or 'Funnel report'}", "", _how_to_read(report), ""]
    notes = [str(n) for n in report.get("notes") or []]
    if notes:
        out += [*(f"> **Note:** {n}" for n in notes), ""]

    # Pairs, not a merged dict: a baseline may share a stage's name.
    baselines = [(str(n), _mapping(v)) for n, v in _mapping(report.get("baselines")).items()]
    out += ["## End to end", "", _list_table([*stages.items(), *baselines], "list"), ""]

    out += _verdicts_section(report)
    out += _intervals_section(_mapping(report.get("intervals")))

    cold = _mapping(report.get("cold"))
    if cold:
        cold_rows = [(s, _mapping(cold[s])) for s in _ordered(cold)]
        out += ["## Cold users", "", _list_table(cold_rows, "stage"), ""]

    pointwise = _mapping(report.get("pointwise"))
    if pointwise:
        body = [
            [s]
            + [_fmt(_number(_mapping(pointwise[s]).get(k)), d) for _, k, d in _POINTWISE_COLUMNS]
            for s in _ordered(pointwise)
        ]
        header = ["stage", *(h for h, _, _ in _POINTWISE_COLUMNS)]
        out += ["## Pointwise scores", "", _md_table(header, body), ""]
        out += [
            "On the rated pairs of the part (liked against disliked): only the rank model's "
            "like head is a probability of that label, so only it has a LogLoss and an ECE "
            "(expected calibration error over 10 equal-width bins; see reliability.png) here.",
            "",
        ]

    target = _mapping(report.get("prerank_target"))
    if target:
        body = [
            [
                _fmt(_number(target.get("pairs")), 0),
                _fmt(_number(target.get("positive_share")), 4),
                *(_fmt(_number(target.get(k)), 4) for _, k, _ in _POINTWISE_COLUMNS),
            ]
        ]
        header = ["pairs", "liked share", *(h for h, _, _ in _POINTWISE_COLUMNS)]
        out += [
            "## Pre-rank on its own target",
            "",
            'Pre-rank is trained on recall candidates, label "liked later": here, every recall '
            "candidate of the evaluated users, labelled 1 when it is a liked movie of the part.",
            "",
            _md_table(header, body, text_columns=0),
            "",
        ]

    sweep = _sweep_points(report)
    if sweep:
        default = _default_lambda(report)
        body = []
        for p in sweep:
            lam = _number(p["lambda"])
            name = _fmt_lambda(lam) + (" (default)" if _is_default(lam, default) else "")
            body.append([name] + [_fmt(_number(p.get(k)), d) for _, k, d in _SWEEP_COLUMNS])
        header = ["lambda"] + [h for h, _, _ in _SWEEP_COLUMNS]
        method = str(_mapping(report.get("rerank")).get("method", "mmr")).upper()
        out += [f"## {method} lambda sweep", "", _md_table(header, body), ""]
        for other, rows in _mapping(report.get("rerank_sweeps")).items():
            if str(other).upper() == method or not isinstance(rows, Sequence):
                continue
            body = [
                [_fmt_lambda(_number(r.get("lambda")))]
                + [_fmt(_number(r.get(k)), d) for _, k, d in _SWEEP_COLUMNS]
                for r in rows
                if isinstance(r, Mapping)
            ]
            out += [
                f"## {str(other).upper()} lambda sweep (for comparison)",
                "",
                _md_table(header, body),
                "",
            ]

    training = _mapping(report.get("training"))
    if training:
        body = []
        for s in _ordered(training):
            t = _mapping(training[s])
            body.append(
                [
                    s,
                    str(t.get("metric", "")),
                    _fmt(_number(t.get("best_epoch")), 0),
                    _fmt(_number(t.get("best_metric")), 4),
                    _fmt(_number(t.get("seconds")), 2),
                ]
            )
        header = ["stage", "valid metric", "best epoch", "best valid", "seconds"]
        out += ["## Training", "", _md_table(header, body, text_columns=2), ""]

    timing = _mapping(report.get("timing"))
    if timing:
        body = [[str(n), _fmt(_number(v), 2)] for n, v in timing.items()]
        out += ["## Timing", "", _md_table(["step", "seconds"], body), ""]

    links = [f"![{alt}]({name})" for name, (alt, has) in _PLOTS.items() if has(report)]
    out += ["## Plots", "", *(line for link in links for line in (link, "")), ""]
    return "\n".join(out).rstrip() + "\n"


# ----------------------------------------------------------------------------- plots


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def _plot_funnel(report: Mapping[str, Any]) -> Figure:
    """Candidate count per stage (bars, log axis) and recall-hit retention (line, twin axis)."""
    stages = _stages(report)
    names = list(stages)
    x = list(range(len(names)))
    counts = [_nan(_number(row.get("candidates"))) for row in stages.values()]
    kept = [_nan(_number(row.get("retention"))) for row in stages.values()]

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    bars = ax.bar(x, counts, color="tab:blue", alpha=0.6, label="candidates per user")
    if any(c > 0 for c in counts):  # a log axis needs something positive to show
        ax.set_yscale("log")
        # Tick the actual counts: a 20..500 range has a single power of ten to label.
        ax.set_yticks(sorted({c for c in counts if c > 0}))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    # Counts sit inside the bars so they never collide with the retention labels above.
    ax.bar_label(
        bars, labels=[_fmt(_number(c), 0) if c == c else "" for c in counts], label_type="center"
    )
    ax.set_xticks(x, names)
    ax.set_ylabel("candidates per user (log)")
    ax.set_title(f"{report.get('title') or 'Funnel'}: candidates and retained hits")

    twin = ax.twinx()
    twin.plot(x, kept, "o-", color="tab:red", label="retention of recall's liked hits")
    for xi, r in zip(x, kept, strict=True):
        if r == r:
            twin.annotate(
                f"{r:.0%}",
                (xi, r),
                textcoords="offset points",
                xytext=(0, 7),
                ha="center",
                color="tab:red",
            )
    twin.set_ylim(0, 1.15)
    twin.set_ylabel("share of recall's liked hits kept")
    handles = [bars, *twin.get_lines()]
    fig.legend(handles, [h.get_label() for h in handles], loc="outside lower center", ncols=2)
    return fig


def _plot_lambda_sweep(report: Mapping[str, Any]) -> Figure:
    """NDCG@20 (y) against ILD@20 (x) per lambda of the configured re-ranker, the default
    starred, and the other methods' curves when the report has them ("rerank_sweeps")."""
    points = _sweep_points(report)
    default = _default_lambda(report)
    lams = [_number(p["lambda"]) for p in points]
    ild = [_nan(_number(p.get("ild@20"))) for p in points]
    ndcg = [_nan(_number(p.get("ndcg@20"))) for p in points]

    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    # Points are sorted by lambda, so the line traces the accuracy/diversity trade-off.
    method = str(_mapping(report.get("rerank")).get("method", "mmr"))
    ax.plot(ild, ndcg, "o-", color="tab:blue", alpha=0.8, label=f"{method.upper()} (configured)")
    # The other methods' curves, when the report has them: one Pareto plot of all.
    styles = iter([("tab:green", "s--"), ("tab:orange", "^:"), ("tab:purple", "d-.")])
    for other, sweep in _mapping(report.get("rerank_sweeps")).items():
        if other == method or not isinstance(sweep, Sequence):
            continue
        color, marker = next(styles, ("tab:gray", "x--"))
        rows = sorted(
            (r for r in sweep if isinstance(r, Mapping) and _number(r.get("lambda")) is not None),
            key=lambda r: _number(r["lambda"]),
        )
        ax.plot(
            [_nan(_number(r.get("ild@20"))) for r in rows],
            [_nan(_number(r.get("ndcg@20"))) for r in rows],
            marker,
            color=color,
            alpha=0.8,
            label=str(other).upper(),
        )
    for lam, xi, yi in zip(lams, ild, ndcg, strict=True):
        if xi == xi and yi == yi:
            ax.annotate(
                f"λ={_fmt_lambda(lam)}",
                (xi, yi),
                textcoords="offset points",
                xytext=(5, 5),
                fontsize=8,
            )
            if _is_default(lam, default):
                ax.plot(
                    xi,
                    yi,
                    "*",
                    color="tab:red",
                    markersize=16,
                    zorder=3,
                    label=f"default λ={_fmt_lambda(lam)}",
                )
    ax.set_xlabel("ILD@20 (diversity)")
    ax.set_ylabel("NDCG@20 (accuracy)")
    ax.set_title("Re-rank lambda sweep: accuracy against diversity")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best")
    return fig


def _plot_training(report: Mapping[str, Any]) -> Figure:
    """One panel per trained stage: loss per epoch, the valid metric on a twin axis."""
    training = _training(report)
    fig = Figure(figsize=(4.5 * len(training), 3.8), layout="constrained")
    axes = fig.subplots(1, len(training), squeeze=False)[0]
    for ax, (stage, entry) in zip(axes, training.items(), strict=True):
        metric = str(entry.get("metric", "metric"))
        epochs = [e for e in entry["epochs"] if isinstance(e, Mapping)]
        x = [_nan(_number(e.get("epoch"))) for e in epochs]
        # Fall back to 1..n when the log does not number its epochs.
        if any(v != v for v in x):
            x = list(range(1, len(epochs) + 1))
        loss = [_nan(_number(e.get("loss"))) for e in epochs]
        valid = [_nan(_number(e.get(metric))) for e in epochs]

        ax.plot(x, loss, "o-", color="tab:blue", label="train loss")
        ax.set_xlabel("epoch")
        if len(x) <= 12:
            ax.set_xticks(x)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("loss", color="tab:blue")
        twin = ax.twinx()
        twin.plot(x, valid, "s--", color="tab:green", label=f"valid {metric}")
        twin.set_ylabel(f"valid {metric}", color="tab:green")

        best = _number(entry.get("best_epoch"))
        title = stage
        if best is not None:
            ax.axvline(best, color="grey", linestyle=":", linewidth=1)
            best_metric = _number(entry.get("best_metric"))
            if best_metric is None and best in x:
                best_metric = valid[x.index(best)]
            if best_metric is not None and best_metric == best_metric:
                twin.plot(best, best_metric, "*", color="tab:red", markersize=14, zorder=3)
                title += f" (best {metric} {best_metric:.4f} @ {round(best)})"
        ax.set_title(title, fontsize=10)
    return fig


def _plot_reliability(report: Mapping[str, Any]) -> Figure:
    """Reliability diagram: per bin, the share of positives (y) against the mean predicted
    probability (x), one panel per calibrated probability; the diagonal is perfect."""
    sources = _reliability(report)
    fig = Figure(figsize=(4.5 * len(sources), 4.2), layout="constrained")
    axes = fig.subplots(1, len(sources), squeeze=False)[0]
    for ax, (label, bins) in zip(axes, sources.items(), strict=True):
        count = [_nan(_number(c)) for c in bins["count"]]
        x = [_nan(_number(v)) for v in bins["mean_prob"]]
        y = [_nan(_number(v)) for v in bins["positive_rate"]]
        total = sum(c for c in count if c == c) or 1.0
        ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
        ax.plot(x, y, "o-", color="tab:blue", label="observed")
        for xi, yi, ci in zip(x, y, count, strict=True):
            if xi == xi and yi == yi:  # point size shows how many pairs the bin holds
                ax.plot(xi, yi, "o", color="tab:blue", markersize=3 + 20 * math.sqrt(ci / total))
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("mean predicted probability")
        ax.set_ylabel("share of positives")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    return fig


_PLOTTERS: dict[str, Callable[[Mapping[str, Any]], Figure]] = {
    "funnel.png": _plot_funnel,
    "lambda_sweep.png": _plot_lambda_sweep,
    "training_curves.png": _plot_training,
    "reliability.png": _plot_reliability,
}


def write_plots(report: dict, out_dir: Path) -> list[Path]:
    """Write funnel.png, lambda_sweep.png, training_curves.png and reliability.png into
    `out_dir`.

    A plot whose section is missing or empty is skipped. Each file is written atomically
    (a reader never sees half a PNG). Returns the paths written, in that order. Raises
    ValueError when report["stages"] is missing or empty.
    """
    _stages(report)  # fail before writing anything
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, plot in _PLOTTERS.items():
        if not _PLOTS[name][1](report):
            continue
        fig = plot(report)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120)
        write_atomic(out_dir / name, buf.getvalue())
        written.append(out_dir / name)
    return written
