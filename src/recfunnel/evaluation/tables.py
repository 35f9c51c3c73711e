"""Readable tables of metrics for the terminal and for markdown reports."""

from __future__ import annotations

from collections.abc import Sequence

# The columns of the protocol's reference table, in its order.
REFERENCE_COLUMNS = ("recall@20", "ndcg@20", "hit_rate@20", "precision@20", "recall@200")


def format_value(value: object) -> str:
    """Metrics with 4 decimals (the protocol's precision), counts as integers."""
    if isinstance(value, float):
        return f"{value:,.0f}" if value.is_integer() and abs(value) >= 1 else f"{value:.4f}"
    return str(value)


def format_table(rows: Sequence[dict[str, object]], columns: Sequence[str]) -> str:
    """A plain aligned text table; a missing cell prints as "-"."""
    cells = [[format_value(row.get(c, "-")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for r in cells:
        # Left-align the text columns, right-align numbers.
        lines.append(
            "  ".join(
                v.ljust(w) if not _is_number(v) else v.rjust(w)
                for v, w in zip(r, widths, strict=True)
            ).rstrip()
        )
    return "\n".join(lines)


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True
