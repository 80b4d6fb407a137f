"""`parsgd report DIR --html FILE` and an experiment's report.html: ONE self-contained HTML file.

    parsgd report results --html results/report.html         # an experiment folder
    parsgd report runs/sequential-p1-... runs/ps-p2-... --html two.html

Everything is inside the file, so a browser opens it offline and it can be mailed or attached: the
plots as base64 PNGs (the same figures `parsgd plot` draws), the timeline as inline SVG with an inline
script to zoom it (html_timeline.py), inline CSS with the browser's own fonts. Nothing in it names a
URL, so opening it makes no network request. Sections: the comparison table (the columns of the text
report), the plots, the per-step timeline of each parameter-server run, bytes per server and per
process's link, the emulated links' estimate-vs-measured table (when there is one), and the config of
every run.
"""
from __future__ import annotations

import base64
import datetime as _dt
import json
import tempfile
from html import escape
from pathlib import Path

import numpy as np

from parsgd.analysis.experiments import ExperimentFolderGiven, experiment_baseline, experiment_runs, is_experiment_dir
from parsgd.analysis.html_timeline import ZOOM_SCRIPT, timeline_html
from parsgd.analysis.linkreport import link_section
from parsgd.analysis.rundirs import Run, RunDirError, load_run
from parsgd.analysis.stepparts import server_bytes
from parsgd.analysis.tables import COLUMNS, cell
from parsgd.files import write_file

HTML_FILE = "report.html"  # what `parsgd experiment` writes into its folder
STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #eee; } td:first-child, th:first-child { text-align: left; }
img.plot { max-width: 100%; border: 1px solid #ddd; margin: 0.3em 0 1em; display: block; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 12px; }
.tl-grid { display: flex; border: 1px solid #ccc; }
.tl-names { font-size: 12px; padding: 0 6px; background: #f3f3f3; white-space: nowrap; }
svg.tl { flex: 1; width: 100%; cursor: grab; display: block; }
.sw { display: inline-block; width: 12px; height: 12px; margin: 0 3px 0 10px; vertical-align: middle; }
"""


def load_targets(paths) -> tuple[list[Run], Run, Path | None]:
    """(runs, baseline, experiment folder or None) for one experiment folder or run directories.

    Raises RunDirError for a folder that is neither, or an experiment folder without finished runs,
    ExperimentFolderGiven (exit 2) for an experiment folder among others.
    """
    paths = [Path(p) for p in paths]
    if len(paths) == 1 and is_experiment_dir(paths[0]):
        runs = [load_run(d) for d in experiment_runs(paths[0])]
        if not runs:
            raise RunDirError(f"{paths[0]} is an experiment folder without a finished run: nothing to report; "
                              "rerun the experiment")
        return runs, experiment_baseline(runs), paths[0]
    folders = [p for p in paths if is_experiment_dir(p)]
    if folders:
        raise ExperimentFolderGiven(f"{folders[0]} is an experiment folder: report it alone, or give its runs "
                                    "among the others")
    runs = [load_run(p) for p in paths]
    return runs, experiment_baseline(runs), None


def _table(rows: list[dict], columns, table_id: str = "") -> str:
    """An HTML table of `rows` with (key, header, format) `columns`, cells formatted as the text tables."""
    head = "".join(f"<th>{escape(h)}</th>" for _, h, _ in columns)
    body = "".join("<tr>" + "".join(f"<td>{escape(cell(k, f, row.get(k)))}</td>" for k, _, f in columns) + "</tr>"
                   for row in rows)
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def comparison_html(runs: list[Run], baseline: Run) -> str:
    """The comparison table (report.comparison_rows, the columns of experiment_report.txt)."""
    from parsgd.analysis.report import comparison_rows

    rows = comparison_rows(runs, baseline)
    columns = [c for c in COLUMNS if rows and any(r.get(c[0]) is not None for r in rows) or c[0] == "run"]
    return _table(rows, columns, "comparison")


def plots_html(runs: list[Run], folder: Path | None, pngs=None) -> str:
    """The plots as <img> tags with base64 PNGs: the files `pngs` when given (what an experiment just
    drew), else drawn into a temporary folder as `parsgd plot` would."""
    from parsgd.analysis.plots import plot_runs

    def tags(files) -> str:
        return "".join(f'<h3>{escape(Path(f).stem.replace("_", " "))}</h3><img class="plot" alt="{escape(Path(f).name)}" '
                       f'src="data:image/png;base64,{base64.b64encode(Path(f).read_bytes()).decode()}">'
                       for f in files if Path(f).is_file())

    if pngs is not None:
        return tags(pngs)
    with tempfile.TemporaryDirectory(prefix="parsgd-html-") as tmp:
        return tags(plot_runs([folder] if folder else runs, tmp))


def link_bytes(run: Run) -> list[dict]:
    """Per process of a parameter-server run (its own link on emulated hosts): bytes per timed step it
    sent (`out`) and received (`in`), from comm.jsonl's send / recv spans after the warm-up (every step
    when none came after it)."""
    comm = run.comm
    if comm is None or not len(comm):
        return []
    first = int(run.summary.get("warmup_steps") or 1)
    timed = comm.step >= first
    if not timed.any():  # a run no longer than the warm-up: every step (the server_bytes table is left out)
        timed = comm.step >= 0
    steps = max(1, len(np.unique(comm.step[timed])))
    rows = []
    for role, rank in comm.tracks():
        mine = timed & (comm.role == role) & (comm.rank == rank)
        rows.append({"process": f"{role} {rank}",
                     "out": float(comm.bytes[mine & (comm.span == "send")].sum()) / steps,
                     "in": float(comm.bytes[mine & (comm.span == "recv")].sum()) / steps})
    return rows


def bytes_html(runs: list[Run]) -> str:
    """Per-server and per-process-link bytes tables of every parameter-server run ("" when none)."""
    parts = []
    kb = "{:.1f}"
    for run in runs:
        links, servers = link_bytes(run), server_bytes(run)
        if not links:
            continue
        parts.append(f"<h3>{escape(run.label)}</h3>")
        if servers:
            for r in servers:
                r.update(in_kb=r["in"] / 1e3, out_kb=r["out"] / 1e3)
            parts.append("<p>per parameter server, per timed step</p>" + _table(servers, [
                ("server", "server", "{}"), ("elements", "elements", "{:d}"), ("ranges", "key ranges", "{}"),
                ("in_kb", "in KB", kb), ("out_kb", "out KB", kb), ("imbalance", "bytes / mean", "{:.2f}")]))
        for r in links:
            r.update(in_kb=r["in"] / 1e3, out_kb=r["out"] / 1e3)
        parts.append("<p>per process link, per timed step</p>" + _table(
            links, [("process", "process", "{}"), ("out_kb", "sent KB", kb), ("in_kb", "received KB", kb)]))
    return "".join(parts)


def configs_html(runs: list[Run]) -> str:
    """Each run's config.json (RunConfig, setup, versions, machine) in a collapsible block."""
    keep = ("config", "mode", "transport", "dataset", "setup", "versions", "host", "started", "machine")
    return "".join(f"<details><summary>{escape(r.label)} ({escape(str(r.path))})</summary><pre>"
                   f"{escape(json.dumps({k: r.meta.get(k) for k in keep if k in r.meta}, indent=2))}</pre></details>"
                   for r in runs)


def build_html(paths, pngs=None) -> str:
    """The whole report page for one experiment folder or run directories (see the module docstring).
    `pngs`: plot files already drawn (an experiment's), else they are drawn here. Raises RunDirError."""
    return build_page(*load_targets(paths), pngs=pngs)


def build_page(runs: list[Run], baseline: Run, folder: Path | None = None, pngs=None) -> str:
    """build_html of loaded runs; `folder`: the experiment folder (capacity.json, experiment_report.txt)."""
    from parsgd.analysis.report import describe_config

    title = f"parsgd report: {folder or ', '.join(r.label for r in runs)}"
    now = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    sections = [f"<h1>{escape(title)}</h1>",
                f"<p>{escape(now)}; configuration: {escape(describe_config(baseline.config, baseline.dataset))}; "
                f"speedups relative to {escape(baseline.label)}</p>",
                "<h2>Comparison</h2>", comparison_html(runs, baseline),
                "<h2>Plots</h2>", plots_html(runs, folder, pngs)]
    timelines = "".join(timeline_html(r) for r in runs)
    if timelines:
        sections += ["<h2>Per-step timeline</h2>", timelines]
    if bytes_per := bytes_html(runs):
        sections += ["<h2>Bytes per server and per link</h2>", bytes_per]
    if links := link_section(runs, folder):
        sections += ["<h2>Emulated links: estimated vs measured</h2>", f"<pre>{escape(chr(10).join(links))}</pre>"]
    text = folder / "experiment_report.txt" if folder else None
    if text is not None and text.is_file():
        sections += ["<h2>Text report</h2>", f"<details><summary>experiment_report.txt</summary><pre>"
                     f"{escape(text.read_text(encoding='utf-8'))}</pre></details>"]
    sections += ["<h2>Config of every run</h2>", configs_html(runs)]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<style>{STYLE}</style></head><body>{"".join(sections)}<script>{ZOOM_SCRIPT}</script></body></html>\n')


def write_html(paths, file, pngs=None) -> Path:
    """Write build_html(paths, pngs) to `file` atomically; returns its path. Raises RunDirError, WriteError."""
    return write_file(Path(file), build_html(paths, pngs).encode("utf-8"))
