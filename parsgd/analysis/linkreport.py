"""The report's section on emulated links: capacity first, then per configuration the bytes through the
server's link, the bandwidth floor, the synchronous bound, the measured and the estimated step time.

    python -c "from parsgd.analysis.linkreport import link_section; from parsgd.analysis.rundirs import \
load_run; print('\\n'.join(link_section([load_run('results/ps-p2-tcp-100mbit')])))"
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from parsgd.analysis.costmodel import NoCalibration, calibrate, link_bounds, read_link
from parsgd.analysis.rundirs import Run, RunDirError

CAPACITY_FILE = "capacity.json"   # written by `parsgd experiment --link` before the configurations


def read_capacity(folder) -> dict | None:
    path = Path(folder) / CAPACITY_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        return None


def _estimates(runs: list[tuple[Run, dict]]) -> dict:
    """{run path: (predicted step s, label of the run it was calibrated on)}: each emulated run estimated
    from another one (the first other calibrated run), never from itself."""
    models = []
    for run, link in runs:
        try:
            models.append((run, calibrate(run.path)))
        except (NoCalibration, RunDirError):
            continue
    out = {}
    for run, link in runs:
        source = next(((r, m) for r, m in models if r.path != run.path), None)
        if source:
            out[run.path] = (source[1].predict(run.workers, link["rate_bps"])["step_s"], _label(source[0]))
    return out


def _label(run: Run) -> str:
    link = read_link(run.path) or {}
    return run.label if "@" in str(run.transport) else f"{run.label} @{link.get('rate', '?')}"


def link_section(runs: list[Run], folder=None) -> list[str]:
    """The report lines for the emulated runs among `runs` ([] when there are none). `folder`: where
    capacity.json is (the experiment's output folder)."""
    emulated = [(r, link) for r in runs if (link := read_link(r.path))]
    if not emulated:
        return []
    cores = emulated[0][1].get("cores", "?")
    capacity = read_capacity(folder) if folder else None
    caps = [l["calibration"]["capacity_bytes_per_s"] for _, l in emulated if l.get("calibration")]
    lines = ["Emulated links (hosts in network namespaces on one machine)", "-" * 59,  # measured: parsgd.jobs.emulate
             f"  Every figure here was measured with all emulated hosts sharing this machine's {cores} cores."]
    if capacity:
        lines.append(f"  Unshaped capacity through veth, bridge, TCP and CURVE on these {cores} cores, measured first: "
                     f"{capacity['capacity_bytes_per_s'] * 8 / 1e9:.2f} Gbit/s of payload "
                     f"({capacity['capacity_bytes_per_s'] / 1e6:.0f} MB/s).")
    elif caps:
        lines.append(f"  Unshaped capacity (each run's own link check, median): "
                     f"{sorted(caps)[len(caps) // 2] * 8 / 1e9:.2f} Gbit/s of payload.")
    estimates = _estimates(emulated)
    header = (f"  {'run':<22} {'out KB':>8} {'in KB':>8} {'floor ms':>9} {'pipe ms':>8} {'sync ms':>8} {'measured':>9} "
              f"{'estimated':>9}  link check")
    lines += [header, "  " + "-" * (len(header) - 2)]
    groups: dict[str, list[tuple[Run, dict]]] = {}
    for run, link in emulated:  # the repeats of a configuration are one line: the median of each figure
        groups.setdefault(run.label, []).append((run, link))
    for group in groups.values():
        run, link = group[0]
        each = [link_bounds(r, lk) for r, lk in group]
        b = {k: (float(np.median([e[k] for e in each])) if isinstance(v, float) else v) for k, v in each[0].items()}
        cal = link.get("calibration") or {}
        if not cal:
            check = "not run"
        elif cal.get("bound") == "cpu-bound":
            check = "CPU-bound: above the capacity, not a link"
        else:
            got = cal["measured_payload_bytes_per_s"] / cal["expected_payload_bytes_per_s"]
            check = f"{got:.0%} of the rate" + ("" if cal.get("rate_ok") else " (off by more than 10%)")
        est = estimates.get(run.path)
        lines.append(f"  {_label(run) + (f' x{len(group)}' if len(group) > 1 else ''):<22} {b['out_bytes'] / 1e3:>8.1f} {b['in_bytes'] / 1e3:>8.1f} "
                     f"{b['floor_s'] * 1e3:>9.2f} {b['pipelined_s'] * 1e3:>8.2f} {b['sync_s'] * 1e3:>8.2f} "
                     f"{b['step_s'] * 1e3:>9.2f} "
                     f"{(f'{est[0] * 1e3:.2f}' if est else '-'):>9}  {check}")
    sources = sorted({src for _, src in estimates.values()})
    lines += ["  out / in: bytes per step through the server's link (TASKs out, GRADs in). floor = max(out, in) /",
              "  rate (each direction is shaped on its own); sync = (out + in) / rate + the slowest shard's compute",
              "  (BSP sends every TASK before any GRAD returns); pipe = (P + 1) messages / rate + compute (each GRAD",
              "  right behind its own TASK): parsgd's steps sit between pipe and sync, as the first GRADs come back",
              "  while the last TASKs are still on the link; rate = RATE x 1448/1514 of TCP payload. estimated: the",
              "  alpha-beta model (parsgd estimate) calibrated on another run: " + (", ".join(sources) or "-") + ".",
              "  A rate above the unshaped capacity is CPU-bound: these cores, not the link, set the pace. xN: the",
              "  median of a configuration's N runs (the link check of its first).", ""]
    return lines
