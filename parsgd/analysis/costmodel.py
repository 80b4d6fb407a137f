"""An alpha-beta (Hockney) cost model of one BSP step, calibrated on an emulated run, and its predictions.

    parsgd estimate runs/ps-p2-link --workers 2,4,8 --link 100mbit,1gbit,10gbit

A message of s bytes costs alpha + s x beta (Hockney 1994). One run holds one message size on one
link, so the launcher calibrates (parsgd.jobs.emulate, RUN_DIR/link.json): a ping-pong at several
sizes with the link unshaped gives alpha_0 and the per-byte CPU cost c (copies, CURVE encryption and
decryption, veth and bridge on these cores); at RATE the per-byte link time is 8 / (RATE x e),
e = MSS / frame bytes (1448/1514: tbf counts Ethernet, IP and TCP headers). So beta = 8/(RATE e) + c.
A link of one-way delay D (`--link-delay`) adds D to every message: alpha = alpha_0 + d, d fitted
from the link check's round trips, d = (RTT at D - unshaped RTT) / 2 (link.json `calibration.rtt`);
a prediction at another delay (`estimate --link-delay`) puts that delay in for d.

One step with P workers, message m bytes (the parameter vector plus a header, both ways), star
network (every byte crosses the server's link, each direction shaped on its own):

    step(P, RATE) = S(P) + compute(P) + W k(P) + comm(P) + o
    comm(P)       = 2 (alpha_0 + d) + max(link(P m + (1 + f (P - 1)) g), (P + 2) m c)    (g = m, or --compress's GRAD)
    link(b)       = max(b - 2 bucket, 0) x 8 / (RATE e)                         (tbf lets `bucket` bytes pass at once)
    compute(P)    = r x ceil(B / P) x k(P)                                      (the slowest shard)
    S(P)          = s0 + s1 x P                                                 (the server's serial CPU time)
    k(n)          = max(1, n / cores)                                           (emulated hosts share the cores)

Every byte of a step crosses the server's link: P TASKs out, then P GRADs in. With --compress a GRAD
is g = m x (encoded / raw bytes of the codec, model/compressor.push_ratio) bytes; TASKs stay m. With f = 1 no GRAD
moves before the last TASK is through (the synchronous bound, 2 P m); with f = 0 worker i's GRAD
follows right behind its own TASK and only one message's time is added (P + 1 messages). parsgd
sends the TASKs back to back and TCP delivers them partly one after the other, so f lies between:
it is fitted on the run (0.5-0.9 measured here), and what the run took beyond f = 1 is the
overhead o (wake-ups, the I/O threads waiting for a core). The server's I/O thread encrypts every
TASK and decrypts every GRAD (P m c, one thread, so not spread over the cores): when
that is longer than the link time, the link is faster than these cores (bound `cpu`); otherwise it
runs while the link carries the bytes; when CPU-bound, the first message's encryption and the last
one's decryption add 2 m c. r (seconds per row
alone), s0 (serialize + update), s1 (per worker: aggregate, recv, deserialize) and W (a worker's
copies) come from the run's comm.jsonl, the core count from link.json. The sequential step is the
gradient of a batch alone (timed by the launcher) plus the update.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from parsgd.analysis.rundirs import Run, RunDirError, load_run
from parsgd.cluster.emulated import tbf_args, wire_efficiency
from parsgd.cluster.rates import format_rate, parse_rate
from parsgd.model.compressor import push_ratio

LINK_FILE = "link.json"
SOURCES = ("R. W. Hockney, The communication challenge for MPP: Intel Paragon and Meiko CS-2, Parallel "
           "Computing 20(3), 1994 (alpha-beta model); L. G. Valiant, A bridging model for parallel "
           "computation, CACM 33(8), 1990 (BSP); M. Li et al., Scaling distributed machine learning with "
           "the parameter server, OSDI 2014")


class NoCalibration(RunDirError):
    """The run has no link calibration (not an emulated run, or its link check failed)."""


def read_link(run_dir) -> dict | None:
    """RUN_DIR/link.json as a dict, None when the run was not emulated. Raises RunDirError if corrupt."""
    path = Path(run_dir) / LINK_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{path}: cannot read it ({exc}); re-run the emulated launch") from None


def one_way_latency_s(link: dict | None) -> float:
    """A message's one-way latency on the run's emulated link, in seconds: half the link check's measured
    round trip of an empty message (link.json `calibration.rtt.measured_s`: any --link-delay D plus the
    unshaped path), 0.0 when there is none (not emulated, or a link.json from before the round trip)."""
    rtt = ((link or {}).get("calibration") or {}).get("rtt") or {}
    value = rtt.get("measured_s")
    return float(value) / 2 if isinstance(value, (int, float)) and value >= 0 else 0.0


def _bucket(rate_bps: float) -> int:
    args = tbf_args(rate_bps)
    return int(args[args.index("burst") + 1])


def step_figures(run: Run) -> dict:
    """Per step, from comm.jsonl (steps >= 1: step 0 holds the start-up): `out_bytes` and `in_bytes`
    (server send / recv), `compute_s` (slowest shard), `step_s` (the median time from one step's start
    to the next's, on the server: an epoch end's evaluation is left out), and the
    parts of the server's serial time. Raises RunDirError without a comm.jsonl."""
    comm = run.comm
    if comm is None or not len(comm):
        raise RunDirError(f"{run.path} has no comm.jsonl: pass a parameter-server run")
    steps = int(run.summary.get("steps") or (comm.step.max() + 1))
    keep = comm.step >= 1
    n = max(1, len(np.unique(comm.step[keep])))

    def total(role, span, what="dur_s"):  # the server: server 0 (the coordinator) of --servers S
        mask = keep & (comm.role == role) & (comm.span == span) & ((comm.rank == 0) | (role != "server"))
        return float(np.nansum(getattr(comm, what)[mask])) / n

    mask = keep & (comm.role == "worker") & (comm.span == "compute")
    per_rank: dict[tuple[int, int], float] = {}  # a worker's compute spans of a step (a prefetch makes two)
    for s, r, d in zip(comm.step[mask], comm.rank[mask], comm.dur_s[mask]):
        per_rank[int(s), int(r)] = per_rank.get((int(s), int(r)), 0.0) + float(d)
    slowest: dict[int, float] = {}
    for (s, _), d in per_rank.items():
        slowest[s] = max(slowest.get(s, 0.0), d)
    sends = keep & (comm.role == "server") & (comm.rank == 0) & (comm.span == "send")
    server = (comm.role == "server") & (comm.rank == 0) & (comm.step >= 1) & (comm.span != "link")
    starts = {}
    for s, t in zip(comm.step[server], comm.t_s[server]):
        starts[int(s)] = min(starts.get(int(s), t), t)
    durations = [starts[s + 1] - starts[s] for s in sorted(starts) if s + 1 in starts]
    step_s = float(np.median(durations)) if durations else float(run.summary["total_time_s"]) / steps
    return {"steps": steps, "workers": run.workers,
            "out_bytes": total("server", "send", "bytes"), "in_bytes": total("server", "recv", "bytes"),
            "message_bytes": float(np.median(comm.bytes[sends])) if sends.any() else 0.0,
            "compute_s": float(np.median(list(slowest.values()))) if slowest else 0.0,
            "step_s": step_s,
            "server_const_s": total("server", "serialize") + total("server", "update"),
            "server_var_s": sum(total("server", s) for s in ("aggregate", "recv", "deserialize")),
            "worker_copy_s": (total("worker", "deserialize") + total("worker", "serialize")) / max(1, run.workers)}


def link_bounds(run: Run, link: dict | None = None) -> dict | None:
    """Bytes per step each way through the server's link, the bandwidth floor max(out, in) / rate,
    the synchronous bound (out + in) / rate + compute, the pipelined bound (each GRAD right behind its
    own TASK: (P + 1) messages, less the tbf bucket each way, + compute) and the measured step time
    (seconds; rate in payload bytes/s = RATE x e / 8); None for a run that was not emulated."""
    link = link if link is not None else read_link(run.path)
    if not link:
        return None
    f = step_figures(run)
    payload = link["rate_bps"] * link.get("wire_efficiency", wire_efficiency()) / 8
    floor = max(f["out_bytes"], f["in_bytes"]) / payload
    sync = (f["out_bytes"] + f["in_bytes"]) / payload + f["compute_s"]
    p = max(1, f["workers"])
    credit = 2 * min(_bucket(link["rate_bps"]), f["message_bytes"]) / payload
    pipelined = max(floor, (p + 1) / (2 * p) * (f["out_bytes"] + f["in_bytes"]) / payload - credit) + f["compute_s"]
    return {"link": link["rate"], "out_bytes": f["out_bytes"], "in_bytes": f["in_bytes"], "floor_s": floor,
            "pipelined_s": pipelined, "sync_s": sync, "step_s": f["step_s"], "compute_s": f["compute_s"],
            "bound": link.get("calibration", {}).get("bound", "unknown")}


@dataclass(frozen=True)
class Model:
    """The calibrated parameters (seconds, bytes); see the module doc for the formula."""
    alpha_s: float            # per message, unshaped ping-pong intercept
    cpu_s_per_byte: float     # c: unshaped ping-pong slope
    message_bytes: float      # m
    row_s: float              # r: seconds per row of a shard, one process alone on a core
    batch: int                # B
    cores: int
    server_const_s: float     # s0
    server_per_worker_s: float  # s1
    worker_copy_s: float      # W
    seq_step_s: float         # the sequential step: gradient of a batch alone + update
    steps_per_epoch: int
    run_workers: int
    run_link: str
    overlap: float = 0.5      # f: 1 = the synchronous bound (no GRAD moves before the last TASK is through)
    overhead_s: float = 0.0   # o: what the run's step had beyond the other terms (wake-ups, cores shared)
    run_servers: int = 1      # S of the calibration run
    server_cpu_share: float = 1.0  # max / mean parameters of one server (1 for --shard-by elements)
    latency_s: float = 0.0    # d: the run's one-way link delay, fitted from the link check's round trips
    push_ratio: float = 1.0   # --compress: a GRAD's bytes / a TASK's (model/compressor.push_ratio)

    def share(self, busy: float) -> float:
        return max(1.0, busy / self.cores)

    def parts(self, workers: int, rate_bps: float, overlap: float | None = None, servers: int = 1,
              server_rate_bps: float | None = None, delay_s: float | None = None) -> dict:
        """The terms of one step (seconds): serial, compute, copies, link (the busiest link), cpu, alpha;
        `server_link` and `worker_link` are the two candidates for the busiest link (S servers: the busiest
        server moves max/mean x 1/S of every message; a worker's own link moves its whole vector in, then
        its gradient out, whatever S is); `delay_s`: the one-way link delay d (default: the run's)."""
        p, m, c = workers, self.message_bytes, self.cpu_s_per_byte
        d = self.latency_s if delay_s is None else delay_s
        g = m * self.push_ratio   # a GRAD: the encoded gradient (--compress), else m
        f = self.overlap if overlap is None else overlap
        share = 1.0 if servers == 1 else self.server_cpu_share / servers  # of each message, on the busiest server
        srate = server_rate_bps or rate_bps
        unit, sunit = 8 / (rate_bps * wire_efficiency()), 8 / (srate * wire_efficiency())
        server_link = max((p * m + (1 + f * (p - 1)) * g) * share - 2 * min(_bucket(srate), m * share), 0) * sunit
        worker_link = 0.0 if servers == 1 else max(m + g - 2 * min(_bucket(rate_bps), m), 0) * unit
        cpu_s = p * (m + g) / 2 * share * c   # the busiest server's I/O thread: every TASK part out, every GRAD part in
        return {"serial": self.server_const_s + self.server_per_worker_s * p * share,
                "compute": self.row_s * math.ceil(self.batch / p) * self.share(p + servers - 1),
                "copies": self.worker_copy_s * self.share(p + servers - 1), "link": max(server_link, worker_link),
                "server_link": server_link, "worker_link": worker_link, "cpu": cpu_s,
                "fixed": 2 * (self.alpha_s + d) * (2 if servers > 1 else 1), "latency": d}

    def predict(self, workers: int, rate_bps: float, servers: int = 1, server_rate_bps: float | None = None,
                delay_s: float | None = None) -> dict:
        """{workers, servers, link, delay_s, step_s, epoch_s, speedup, comm_share, bound, compute_s, link_s,
        cpu_s, alpha_s}; bound is `link` (the servers' links), `workers' links` (adding servers no longer
        helps), `cpu`, or `latency` (the messages' fixed cost 2 alpha, delays included, is the largest part)."""
        t = self.parts(workers, rate_bps, servers=servers, server_rate_bps=server_rate_bps, delay_s=delay_s)
        # CPU-bound: nothing hides the first message's encryption and the last one's decryption
        comm = t["fixed"] + max(t["link"], t["cpu"] + (1 + self.push_ratio) * self.message_bytes * self.cpu_s_per_byte)
        step = t["serial"] + t["compute"] + t["copies"] + comm + self.overhead_s
        epoch = step * self.steps_per_epoch
        bound = ("cpu" if t["cpu"] > t["link"] else "workers' links" if t["worker_link"] > t["server_link"]
                 else "link")
        if t["latency"] and t["fixed"] > max(t["link"], t["cpu"], t["compute"]):
            bound = "latency"
        return {"workers": workers, "servers": servers, "link": format_rate(rate_bps), "delay_s": t["latency"],
                "alpha_s": self.alpha_s + t["latency"], "step_s": step,
                "epoch_s": epoch, "speedup": self.seq_step_s / step, "comm_share": (comm + t["copies"]) / step,
                "bound": bound, "compute_s": t["compute"], "link_s": t["link"], "cpu_s": t["cpu"],
                "server_link_s": t["server_link"], "worker_link_s": t["worker_link"]}


def calibrate(run_dir) -> Model:
    """The Model of an emulated run directory (its link.json and comm.jsonl); the overhead o is what the
    run's own step took beyond the other terms. Raises NoCalibration (no link check), RunDirError."""
    run = load_run(run_dir)
    link = read_link(run.path)
    cal = (link or {}).get("calibration")
    if not cal or "unshaped" not in cal:
        raise NoCalibration(f"{run.path} has no link calibration ({LINK_FILE}): estimate needs a run of "
                            "`parsgd launch --link RATE` (with its link check, PARSGD_LINK_CHECK unset)")
    f = step_figures(run)
    un = cal["unshaped"]
    alpha = (un["up_fit"]["alpha_s"] + un["down_fit"]["alpha_s"]) / 2
    latency = float(cal.get("rtt", {}).get("measured_one_way_s", link.get("delay_s") or 0.0))
    c = (un["up_fit"]["beta_s_per_byte"] + un["down_fit"]["beta_s_per_byte"]) / 2
    cores = int(link.get("cores") or 2)
    batch, p = int(run.config.get("batch_size", 1)), run.workers
    row_s = f["compute_s"] / math.ceil(batch / p) / max(1.0, p / cores)
    grad = cal.get("gradient_s", {})
    servers = int(run.config.get("servers") or 1)
    kr = run.key_ranges
    message = f["message_bytes"] or cal["message_bytes"]
    if servers > 1:  # server 0 sent its part: the whole vector is S / (its share) times that
        message = message * kr.n / kr.size(0)
    model = Model(alpha_s=alpha, cpu_s_per_byte=c, message_bytes=message,
                  row_s=row_s, batch=batch, cores=cores, server_const_s=f["server_const_s"],
                  server_per_worker_s=f["server_var_s"] / p, worker_copy_s=f["worker_copy_s"],
                  seq_step_s=float(grad.get("batch", row_s * batch)) + f["server_const_s"],
                  steps_per_epoch=math.ceil(f["steps"] / max(1, len(run.metrics))), run_workers=p,
                  run_link=link["rate"], run_servers=servers, server_cpu_share=kr.imbalance(), latency_s=latency,
                  push_ratio=push_ratio(run.config))
    return fit(model, p, link["rate_bps"], f["step_s"], servers, link.get("server_rate_bps"))


def fit(model: Model, p: int, rate_bps: float, step_s: float, servers: int = 1,
        server_rate_bps: float | None = None) -> Model:
    """`model` with the overlap f in [0, 1] that gives the measured `step_s` at (p, rate_bps, servers), and
    what is left beyond f = 1 as the overhead o (f = 1 when the link does not set the pace: P = 1,
    CPU-bound)."""
    kw = {"servers": servers, "server_rate_bps": server_rate_bps}
    lo, hi = model.parts(p, rate_bps, 0.0, **kw), model.parts(p, rate_bps, 1.0, **kw)
    f = 1.0
    if p >= 2 and hi["link"] > hi["cpu"] and hi["link"] > lo["link"]:
        rest = hi["serial"] + hi["compute"] + hi["copies"] + hi["fixed"]
        f = float(min(1.0, max(0.0, (step_s - rest - lo["link"]) / (hi["link"] - lo["link"]))))
    model = dataclasses.replace(model, overlap=f, overhead_s=0.0)
    return dataclasses.replace(model, overhead_s=max(0.0, step_s - model.predict(p, rate_bps, **kw)["step_s"]))


def estimate(run_dir, workers=(2, 4, 8, 16, 64), links=None, servers=None,
             server_link: str | None = None, delays=None) -> tuple[Model, list[dict]]:
    """The model of `run_dir` and one prediction per (workers, link, servers, delay); links default to the
    run's, servers to the run's S, delays (one-way seconds) to the run's fitted d; `server_link`: the
    servers' rate (default: each link)."""
    model = calibrate(run_dir)
    rates = [parse_rate(r) for r in (links or [model.run_link])]
    srate = parse_rate(server_link) if server_link else None
    return model, [model.predict(p, r, s, srate, d) for d in (delays or [None]) for r in rates
                   for s in (servers or [model.run_servers]) for p in workers]


def format_estimate(model: Model, predictions: list[dict]) -> str:
    """The model's parameters and a table of predictions, as `parsgd estimate` prints them."""
    lines = [f"calibrated on P={model.run_workers} at {model.run_link}: alpha {model.alpha_s * 1e6:.0f} us"
             + (f" + {model.latency_s * 1e3:.2f} ms one-way delay" if model.latency_s else "") + ", "
             f"CPU {model.cpu_s_per_byte * 1e9:.2f} ns/byte (copies, CURVE), message {model.message_bytes / 1e3:.1f} KB"
             + (f" (a GRAD {model.push_ratio:.3f} of it: --compress)" if model.push_ratio != 1 else "") + ", "
             f"{model.row_s * 1e6:.1f} us/row alone, server {model.server_const_s * 1e3:.2f} ms + "
             f"{model.server_per_worker_s * 1e3:.2f} ms x P, {model.cores} cores shared by the emulated hosts",
             f"{'P':>4}  {'S':>3}  {'link':>8}  {'delay':>7}  {'step ms':>9}  {'epoch s':>8}  {'speedup':>9}  {'comm %':>6}  bound"]
    for p in predictions:
        lines.append(f"{p['workers']:>4}  {p['servers']:>3}  {p['link']:>8}  {p['delay_s'] * 1e3:>5.3g}ms  "
                     f"{p['step_s'] * 1e3:>9.2f}  "
                     f"{p['epoch_s']:>8.2f}  {p['speedup']:>8.3g}x  {p['comm_share']:>6.1%}  {p['bound']}")
    lines += servers_stop_helping(predictions)
    lines.append("estimated with the alpha-beta model of README 'Emulated cluster'; emulated hosts share this "
                 "machine's cores (k(n) = max(1, n / cores)); bound cpu = above what these cores move")
    return "\n".join(lines)


def model_dict(model: Model) -> dict:
    return asdict(model)


def servers_stop_helping(predictions: list[dict]) -> list[str]:
    """Lines saying, per worker count and link predicted with several S, from which S on the workers' own
    links bind, so that more servers no longer shorten the step."""
    out = []
    groups: dict[tuple, list[dict]] = {}
    for p in predictions:
        groups.setdefault((p["workers"], p["link"]), []).append(p)
    for (workers, link), ps in groups.items():
        if len({p["servers"] for p in ps}) < 2:
            continue
        bound = [p["servers"] for p in sorted(ps, key=lambda p: p["servers"]) if p["bound"] == "workers' links"]
        if bound:
            out.append(f"P={workers} at {link}: from S={bound[0]} on the workers' own links bind (each moves its whole "
                       "vector in and its gradient out, whatever S is): more servers no longer help")
    return out
