"""A pipeline model of one BSP step with --overlap none | layer | bucket (one server), and its advice.

    parsgd estimate RUN_DIR --overlap --link 100mbit,1gbit --alpha 0.005

Messages cross links of payload rate R (bytes/s; beta = 1 / R) with a one-way latency alpha (s) that
every message pays but that does not hold the link (a delay line: messages pipeline behind one another),
plus a per-message cost o (s, held: headers, system calls). P workers, one server, a star: every byte
crosses the server's link, each direction on its own. One step, from the server's first send:

    pulls     the server sends worker 0's TASK and parameter parts, then worker 1's, ... back to back:
              C_j = C_{j-1} + o + bytes_j / R;  part j reaches its worker at C_j + alpha
    forward   layer i starts at max(its part's arrival, layer i-1's end): F_i = max(A(i), F_{i-1}) + f_i
    backward  layer L-1 first: the gradient of layer i is final at G_i = G_{i+1} + b_i (G_L = F_{L-1})
    pushes    bucket k (overlap.push_plan) leaves its worker at S_k = max(G_lowest(k), S_{k-1} + bytes_{k-1}/R);
              at the server it is served in order of readiness r = S_k + alpha:
              D = max(r + bytes_k / R, D_prev + bytes_k / R) + o   (its own link, then the server's)
    step      max D over every worker's last bucket + the server's own work (sum, update, copies)
    CPU       each end seals a message (copies, CURVE encryption) at c s/byte before it goes on the link
              and opens it (decryption) once all of it is in: the server on its one I/O thread, in and
              out one after the other; a worker on its own. So C_j = max(C_{j-1}, IO_j) + o + bytes/R,
              with IO_j = IO_{j-1} + c bytes_j, a part usable at C_j + alpha + c bytes_j, a bucket on
              the link from max(its sealing, the link free), and the step's end the server's last opening

A run calibrates it (`estimate_overlap`): the residual, what the run's measured step took beyond the
recurrence at its own P, link and mode (wake-ups, the emulated hosts sharing the cores), is added to
every prediction, as costmodel.py's overhead o.

`none` is the same recurrence with one part each way (the TASK carries the parameters). f_i and b_i are
measured by timing model/mlp.backward_layers on ceil(B / P) rows on this machine (the segment between its
yields), scaled so that at the run's P they sum to the run's measured compute. Hand-checked cases:
tests/test_overlapmodel.py. The rule it teaches (PyTorch DDP's bucket_cap_mb, Li et al. VLDB 2020; P3,
Jayarajan et al. MLSys 2019): each message costs alpha + o, and only the backward of the layers below a
bucket hides it, so buckets should merge small layers, not split the big first one.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from parsgd.analysis.costmodel import one_way_latency_s, read_link
from parsgd.analysis.overlapreport import overlap_figures
from parsgd.analysis.rundirs import RunDirError, load_run
from parsgd.analysis.stepparts import link_rate, step_parts
from parsgd.cluster.emulated import wire_efficiency
from parsgd.cluster.rates import format_rate, parse_rate
from parsgd.config import BUCKET_BYTES
from parsgd.model.mlp import Workspace, backward_layers, init_params, layer_bounds, n_params

HEADER_BYTES = 128            # a PART / TASK / GRAD header (msgpack), beside its payload
BUCKETS = (4096, 16384, 65536, 262144, 1048576)   # bucket sizes the advice tries (bytes)
TIMING_REPEATS = 15           # backward passes timed per row count (median of each segment)
TIE = 0.01                    # within 1% of the best, the fewer-message choice is advised
SMALL_BYTES = 4096            # server recv spans below this size measure the per-message cost o


@dataclass(frozen=True)
class Pipeline:
    """Inputs of one step: per layer forward / backward seconds f, b (layer 0 first), the layer ranges'
    bytes, P workers, payload rate R (bytes/s), latency alpha and per-message cost o (s), server work (s)."""
    forward_s: tuple[float, ...]
    backward_s: tuple[float, ...]
    layer_bytes: tuple[int, ...]
    workers: int
    rate: float
    alpha_s: float = 0.0
    message_s: float = 0.0
    server_s: float = 0.0
    header_bytes: int = HEADER_BYTES
    cpu_s_per_byte: float = 0.0   # c: the server's one I/O thread, per byte in or out (copies, CURVE)
    residual_s: float = 0.0       # what the calibration run took beyond the recurrence (wake-ups, cores shared)


def buckets_of(layer_bytes, overlap: str, bucket_bytes: int) -> list[tuple[int, int, int]]:
    """[(lowest layer, highest layer, bytes)] in push order (last layer first), ps/overlap.push_plan's rule
    on these layer sizes (as 1-byte elements); none: one bucket of every layer."""
    if overlap == "none":
        return [(0, len(layer_bytes) - 1, int(sum(layer_bytes)))]
    out, top, acc = [], None, 0
    for i in range(len(layer_bytes) - 1, -1, -1):
        top = i if top is None else top
        acc += layer_bytes[i]
        if overlap == "layer" or acc >= bucket_bytes or i == 0:
            out.append((i, top, acc))
            top, acc = None, 0
    return out


def step_time(p: Pipeline, overlap: str, bucket_bytes: int = 65536) -> dict:
    """{"step_s", "compute_s" (one worker's forward + backward alone), "messages" (per worker, each way),
    "last_gradient_s"} of one step (the recurrence of the module docstring). Raises nothing."""
    plan = buckets_of(p.layer_bytes, overlap, bucket_bytes)
    pulls = list(reversed(plan))  # first layer first
    beta, c, h = 1.0 / p.rate, p.cpu_s_per_byte, p.header_bytes
    clock, io, arrivals = 0.0, 0.0, []
    for _ in range(p.workers):  # the server's uplink: worker-major, parts first layer first
        got = {}
        for lo, hi, nbytes in pulls:
            io += (nbytes + h) * c                                 # sealed by the server's I/O thread, then sent
            clock = max(clock, io) + p.message_s + (nbytes + h) * beta
            for i in range(lo, hi + 1):
                got[i] = clock + p.alpha_s + (nbytes + h) * c      # opened by the worker once all of it is in
        arrivals.append(got)
    ready: list[tuple[float, int]] = []
    for got in arrivals:
        t = 0.0
        for i, f in enumerate(p.forward_s):
            t = max(t, got[i]) + f
        done = {}
        for i in range(len(p.backward_s) - 1, -1, -1):
            t += p.backward_s[i]
            done[i] = t
        free = sealed = 0.0
        for lo, _, nbytes in plan:
            sealed = max(done[lo], sealed) + (nbytes + h) * c       # the worker's I/O thread, then its link
            start = max(sealed, free)
            free = start + (nbytes + h) * beta
            ready.append((start + p.alpha_s, nbytes + h))
    link = 0.0
    for r, nbytes in sorted(ready):
        link = max(r + nbytes * beta, link + nbytes * beta) + p.message_s
        io = max(io, link) + nbytes * c                             # opened by the server once all of it is in
    return {"step_s": io + p.server_s + p.residual_s, "last_gradient_s": io, "messages": len(plan),
            "compute_s": float(sum(p.forward_s) + sum(p.backward_s))}


def measure_layers(sizes, rows: int, dtype: str = "float32", repeats: int = TIMING_REPEATS
                   ) -> tuple[list[float], list[float]]:
    """(forward s per layer, backward s per layer), layer 0 first, medians of `repeats` passes of
    backward_layers on `rows` random rows: forward i = between before_layer(i) and (i + 1); the last
    layer's forward, the loss and its gradient count as its backward (they end at its yield); backward i
    = between the yields of i + 1 and i. Raises nothing."""
    with threadpool_limits(1):  # as a worker computes: one BLAS thread (P workers share the cores)
        return _measure(sizes, rows, dtype, repeats)


def _measure(sizes, rows, dtype, repeats):
    rng = np.random.default_rng(0)
    params = init_params(sizes, 0, dtype)
    x = rng.standard_normal((rows, sizes[0])).astype(dtype)
    y = rng.integers(0, sizes[-1], rows)
    grad, ws = np.empty(n_params(sizes), dtype), Workspace(sizes, dtype)
    layers = len(sizes) - 1
    fw, bw = np.zeros((repeats, layers)), np.zeros((repeats, layers))
    for r in range(repeats + 1):
        marks = []
        steps = backward_layers(params, sizes, x, y, grad, ws, 1.0 / rows,
                                before_layer=lambda i: marks.append(time.perf_counter()))
        yields = {}
        for i in steps:
            yields[i] = time.perf_counter()
        if r == 0:
            continue  # the first pass allocates the workspace
        for i in range(layers - 1):
            fw[r - 1, i] = marks[i + 1] - marks[i]
        bw[r - 1, layers - 1] = yields[layers - 1] - marks[layers - 1]
        for i in range(layers - 1):
            bw[r - 1, i] = yields[i] - yields[i + 1]
    return list(np.median(fw, axis=0)), list(np.median(bw, axis=0))


def layer_bytes(sizes, dtype: str) -> tuple[int, ...]:
    item = np.dtype(dtype).itemsize
    return tuple((hi - lo) * item for lo, hi in layer_bounds(sizes))


def advise(pipe: Pipeline, buckets=BUCKETS) -> dict:
    """Every choice's predicted step {"none": s, "layer": s, "bucket 65536": s, ...} and the advice:
    {"choices", "best" (its label), "bucket_bytes" (the best bucket size), "why"}. Within TIE of the
    best, the choice with fewer messages is advised (less exposed to latency the model does not see)."""
    choices = {"none": step_time(pipe, "none"), "layer": step_time(pipe, "layer")}
    for b in buckets:
        choices[f"bucket {b}"] = step_time(pipe, "bucket", b)
    best_s = min(c["step_s"] for c in choices.values())
    near = [k for k, c in choices.items() if c["step_s"] <= best_s * (1 + TIE)]
    best = min(near, key=lambda k: (choices[k]["messages"], choices[k]["step_s"]))
    def same(b):  # the key of a bucket size: equal buckets (same step, same messages) prefer the default's size
        c = choices[f"bucket {b}"]
        return round(c["step_s"], 9), c["messages"], b != BUCKET_BYTES, b
    if best.startswith("bucket "):
        mine = same(int(best.split()[1]))[:2]
        bucket = min((b for b in buckets if same(b)[:2] == mine), key=same)
        best = f"bucket {bucket}"
    else:
        bucket = min(buckets, key=same)
    saved = choices["none"]["step_s"] - choices[best]["step_s"]
    why = (f"{best} saves {saved * 1e3:.2f} ms of the none step's {choices['none']['step_s'] * 1e3:.2f} ms"
           if best != "none" else "none: every extra message costs more (alpha, o) than the backward it would hide")
    plan = buckets_of(pipe.layer_bytes, "bucket", bucket)
    words = ", ".join(f"layer{'s' if hi > lo else ''} {hi}{f'-{lo}' if hi > lo else ''} ({nbytes / 1e3:.1f} KB)"
                      for lo, hi, nbytes in plan)
    return {"choices": choices, "best": best, "bucket_bytes": bucket, "why": f"{why}; bucket {bucket} B sends {words}"}


def pipeline_for(sizes, dtype: str, batch: int, workers: int, rate: float, alpha_s: float = 0.0,
                 message_s: float = 0.0, server_s: float = 0.0, scale: float = 1.0, timings=None,
                 cpu_s_per_byte: float = 0.0, residual_s: float = 0.0) -> Pipeline:
    """A Pipeline for the model `sizes` at P = workers: layer times measured on ceil(batch / P) rows
    (or `timings`, (forward, backward) lists) times `scale`."""
    f, b = timings or measure_layers(sizes, math.ceil(batch / workers), dtype)
    return Pipeline(tuple(x * scale for x in f), tuple(x * scale for x in b), layer_bytes(sizes, dtype), workers,
                    rate, alpha_s, message_s, server_s, HEADER_BYTES, cpu_s_per_byte, residual_s)


def estimate_overlap(run_dir, workers=None, links=None, alpha_s: float | None = None) -> dict:
    """The pipeline calibrated on a BSP parameter-server run and the advice per (P, link).

    Rate: each of `links` (RATE strings, payload = RATE x 1448/1514), else the run's own (link.json).
    alpha: `alpha_s`, else half the link check's round trip (link.json calibration.rtt.measured_s) (the link check's round trip), else 0. o: the median of
    server 0's recv spans of messages under SMALL_BYTES (at least 10), else half the link check's
    unshaped ping-pong intercept, else 0; c: that check's unshaped per-byte cost (0 without one).
    The residual (see the module doc) is fitted at the run's own P, link and mode. Layer times: measured
    here, scaled to the run's own compute (overlapreport: the slowest worker's, parts excluded); server
    work: stepparts' median.
    Returns {"run", "alpha_s", "message_s", "scale", "measured" (the run's step s), "predicted" (its own
    choice at its P and link, or None without a link), "advice": [{workers, link, ...advise()}]}.
    Raises RunDirError (not a BSP parameter-server run; no link rate and no `links`)."""
    run = load_run(run_dir)
    fig, parts = overlap_figures(run), step_parts(run)
    if fig is None or parts is None:
        raise RunDirError(f"{run.path}: estimate --overlap needs a BSP parameter-server run (with comm.jsonl)")
    cfg = run.config
    sizes, dtype = (784, *cfg.get("hidden", (256, 128)), 10), str(cfg.get("dtype") or "float32")
    batch, p_run = int(cfg.get("batch_size") or 256), run.workers
    own = link_rate(run)
    rates = [(r, parse_rate(r) * wire_efficiency() / 8) for r in links or []] or ([(own[1], own[0])] if own else [])
    if not rates:
        raise RunDirError(f"{run.path} ran on no emulated link: give the rates to predict, e.g. --link 100mbit,1gbit")
    link = read_link(run.path) or {}
    alpha = alpha_s if alpha_s is not None else one_way_latency_s(link)
    comm = run.comm
    small = ((comm.role == "server") & (comm.rank == 0) & (comm.span == "recv") & (comm.step >= 1)
             & (comm.bytes < SMALL_BYTES))
    unshaped = ((link.get("calibration") or {}).get("unshaped") or {})
    fits = [unshaped[k] for k in ("up_fit", "down_fit") if k in unshaped]
    c = float(np.mean([f["beta_s_per_byte"] for f in fits])) if fits else 0.0   # the link check's per-byte cost
    if np.count_nonzero(small) >= 10:   # o: what server 0 spends on a small message (PARTs of small layers)
        o = float(np.median(comm.dur_s[small]))
    else:                               # half the link check's unshaped ping-pong intercept, or 0
        o = float(np.mean([f["alpha_s"] for f in fits])) / 2 if fits else 0.0
    timings = measure_layers(sizes, math.ceil(batch / p_run), dtype)
    scale = fig["compute"] / max(1e-12, sum(timings[0]) + sum(timings[1])) if fig["compute"] > 0 else 1.0
    out = {"run": str(run.path), "overlap": fig["overlap"], "bucket_bytes": int(cfg.get("bucket_bytes") or 65536),
           "alpha_s": alpha, "message_s": o, "cpu_s_per_byte": c, "scale": scale, "measured": fig["step"],
           "predicted": None, "residual_s": 0.0, "advice": []}
    if own:
        pipe = pipeline_for(sizes, dtype, batch, p_run, own[0], alpha, o, parts["server"], scale, timings, c)
        out["predicted"] = step_time(pipe, fig["overlap"], out["bucket_bytes"])["step_s"]
        out["residual_s"] = max(0.0, fig["step"] - out["predicted"])
    for p in workers or [p_run]:
        t = timings if p == p_run else measure_layers(sizes, math.ceil(batch / p), dtype)
        for name, rate in rates:
            pipe = pipeline_for(sizes, dtype, batch, p, rate, alpha, o, parts["server"], scale, t, c, out["residual_s"])
            out["advice"].append({"workers": p, "link": name if isinstance(name, str) else format_rate(name),
                                  **advise(pipe)})
    return out


def format_overlap(est: dict) -> str:
    """The lines `parsgd estimate --overlap` prints."""
    lines = [f"overlap model (analysis/overlapmodel.py) of {est['run']}: alpha {est['alpha_s'] * 1e3:.2f} ms one way, "
             f"{est['message_s'] * 1e6:.0f} us per message (server 0's recv), layer times measured here x "
             f"{est['scale']:.2f} to the run's compute"]
    if est["predicted"] is not None:
        lines.append(f"the run itself (--overlap {est['overlap']}): measured {est['measured'] * 1e3:.2f} ms a step, "
                     f"the recurrence alone {est['predicted'] * 1e3:.2f} ms "
                     f"({est['predicted'] / est['measured'] - 1:+.0%}); the residual {est['residual_s'] * 1e3:.2f} ms "
                     "is added to every prediction below")
    names = list(est["advice"][0]["choices"]) if est["advice"] else []
    lines.append(f"{'P':>4}  {'link':>8}  " + "  ".join(f"{n.replace('bucket ', 'b'):>9}" for n in names)
                 + "  advice (ms per step)")
    for a in est["advice"]:
        lines.append(f"{a['workers']:>4}  {a['link']:>8}  "
                     + "  ".join(f"{a['choices'][n]['step_s'] * 1e3:>9.2f}" for n in names)
                     + f"  {a['best']}, bucket {a['bucket_bytes']} B; {a['why']}")
    return "\n".join(lines)
