"""Plain-text tables: the comparison table's columns and the aligner every report table uses.

    python -c "from parsgd.analysis.tables import format_table; print(format_table([{'run': 'a', 'P': 2}], \
[('run', 'run', '{}'), ('P', 'P', '{:d}')]))"
"""
from __future__ import annotations

# (row key, header, format) of the comparison table, left to right.
COLUMNS = [("run", "run", "{}"), ("P", "P", "{:d}"), ("runs", "runs", "{:d}"), ("timed_steps", "steps", "{:d}"),
           ("timed_s", "timed s", "{:.3f}"), ("ms_per_step", "ms/step", "{:.2f}"), ("speedup", "speedup", "{:.2f}x"),
           ("speedup_range", "min-max", "{:.2f}-{:.2f}x"), ("efficiency", "effic.", "{:.0%}"),
           ("test_acc", "test acc", "{:.4f}"), ("test_loss", "test loss", "{:.4f}"),
           ("time_to_acc", "time to acc", "{:.2f} s"), ("tta_speedup", "tta speedup", "{:.2f}x"),
           ("same_model", "same model", "{}"), ("consistency", "consistency", "{}"),
           ("staleness_mean", "stale mean", "{:.2f}"), ("staleness_max", "stale max", "{:d}"),
           ("comm_share", "comm %", "{:.1%}"),
           ("bytes_per_step", "KB/step", "{:.1f}"), ("push_ratio", "push/raw", "{:.3f}"), ("note", "note", "{}")]
_SCALE = {"bytes_per_step": 1e-3}


def _cell(key: str, fmt: str, value) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)) and key in _SCALE:
        value = value * _SCALE[key]
    try:
        return fmt.format(*value) if isinstance(value, tuple) else fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


cell = _cell  # public: the HTML report (html_report.py) formats its cells as these tables do


def format_table(rows: list[dict], columns=None) -> str:
    """Aligned plain-text table (a header line, a dashes line, one line per row) of `rows`.

    `rows`: dicts such as comparison_rows() returns; `columns`: (key, header, format) triples,
    default COLUMNS (keys the first row lacks are left out). Text is left-aligned, numbers right;
    None prints as "-". `parsgd experiment` prints it as is.
    """
    columns = [c for c in (columns or COLUMNS) if not rows or c[0] in rows[0]]
    cells = [[_cell(k, f, row.get(k)) for k, _, f in columns] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, (_, h, _) in enumerate(columns)]
    left = [i == 0 or any(isinstance(r.get(k), str) for r in rows) for i, (k, _, _) in enumerate(columns)]

    def line(values):
        return "  ".join(v.ljust(w) if lf else v.rjust(w) for v, w, lf in zip(values, widths, left)).rstrip()

    out = [line([h for _, h, _ in columns]), line(["-" * w for w in widths])]
    return "\n".join(out + [line(r) for r in cells])
