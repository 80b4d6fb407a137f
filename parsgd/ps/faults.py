"""Fault injection in a worker, seeded and logged so a run can be replayed.

    parsgd worker --connect ADDR --faults "kill@40"
    parsgd worker --connect ADDR --faults "drop=0.1,seed=7"

Items, comma-separated:  kill@STEP (SIGKILL itself on the TASK, before computing), crash@STEP
(exit 1), stop@STEP:SECONDS (SIGSTOP itself; a child process sends SIGCONT after SECONDS: a
zombie), hang@STEP:SECONDS (a slow but alive worker), nan@STEP / inf@STEP (every gradient it
computes for STEP has a NaN / an Inf), killpush@STEP[:SECONDS] (SIGKILL itself SECONDS, default
0.2, after its GRAD for STEP left: pushed and applied, then gone), cutpush@STEP (SIGKILL itself the
moment that GRAD is handed to the socket: over tcp the frame is cut mid-transfer), deaf@STEP
(after its GRAD for STEP it never reads its socket again, while its heartbeat thread goes on),
killpart@STEP (--overlap: SIGKILL itself 0.2 s after the first PART of its gradient for STEP left: some
parts sent, the others and the GRAD never),
wrongshard@STEP / wrongsize@STEP (its GRAD for STEP names the next shard / has one element too
few: a broken worker, answered with ERROR BAD_MESSAGE), partition@STEP:SECONDS and
latency@STEP:SECONDS:DELAY (with launch --link: the launcher takes the worker's link down, or adds
DELAY one way to it, for SECONDS; `launch --faults latency=worker1@step10:5s:20ms`),
drop=P / dup=P (drop or duplicate each outgoing GRAD with probability P), delay=P:SECONDS,
droptask=P (ignore each incoming TASK with probability P: a lost TASK), slow=FACTOR (every
compute takes FACTOR times as long: a straggler; `launch --faults slow=worker1:3`), seed=N (the PRNG of the
probabilistic faults; each worker draws from its own stream, random.Random("SEED/NAME") with its
--name, so `launch` workers sharing one seed do not drop in lockstep).

`launch --faults` addresses workers by launch index (kind=workerN@...); `parse_launch_faults`
splits such a schedule into one worker --faults text per worker.
"""
from __future__ import annotations

import dataclasses
import math
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np

from parsgd.errors import UsageError


class FaultSpecError(UsageError, ValueError):
    """The --faults text cannot be parsed; the message shows the accepted items."""


ONCE = ("kill", "crash", "stop", "hang", "nan", "inf", "killpush", "cutpush", "deaf", "wrongshard", "wrongsize",
        "partition", "latency", "killpart")
RATES = ("drop", "dup", "delay", "droptask")
HELP = ("kill@STEP, crash@STEP, stop@STEP:SECONDS, hang@STEP:SECONDS, nan@STEP, inf@STEP, killpush@STEP[:SECONDS], "
        "cutpush@STEP, killpart@STEP, deaf@STEP, wrongshard@STEP, wrongsize@STEP, partition@STEP:SECONDS (launch --link), "
        "latency@STEP:SECONDS:DELAY (launch --link, DELAY e.g. 20ms), "
        "drop=P, dup=P, delay=P:SECONDS, droptask=P, "
        "slow=FACTOR, seed=N")
PARTITION_SETTLE_S = 0.5      # partition: the launcher takes this worker's link down meanwhile, before its GRAD
LATENCY_SETTLE_S = 0.2        # latency: the launcher tells the delay relays meanwhile, before its GRAD
DELAY_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}  # as --link-delay (parsgd.cluster.rates.parse_delay)
KILLPUSH_WAIT_S = 0.2         # killpush: time for the GRAD to arrive and be applied before the SIGKILL
RANGES = "STEP is a whole number >= 0, SECONDS a finite number >= 0, P a probability in [0, 1]"


def _delay(text: str) -> float:
    """'20ms' -> 0.02 (us, ms or s; a bare number is ms, as --link-delay). Raises ValueError."""
    number = text.rstrip("usm")
    unit = text[len(number):] or "ms"
    if unit not in DELAY_UNITS or not number:
        raise ValueError(text)
    return float(number) * DELAY_UNITS[unit]


def _seconds(x: float) -> bool:
    """A duration time.sleep takes: finite and >= 0 (NaN, inf and negatives raise there, mid-run)."""
    return math.isfinite(x) and x >= 0


class FaultPlan:
    """A worker's parsed --faults. Its hangs and delays call `sleep(seconds)`: the worker passes one
    that ends early when it is told to stop (ps/stops.py)."""

    def __init__(self, at: dict, rates: dict, seed: int, echo=print, stream: str = "", sleep=time.sleep):
        self.at, self.rates, self.echo, self.sleep = at, rates, echo, sleep
        self.seed, self.stream = seed, stream
        self.rng = random.Random(f"{seed}/{stream}")
        self.fired: set = set()
        self.extra: dict[int, float] = {}   # latency@STEP:SECONDS:DELAY: STEP -> DELAY seconds

    @classmethod
    def parse(cls, spec: str, echo=print, stream: str = "", sleep=time.sleep) -> "FaultPlan":
        at, rates, seed, extra = {}, {}, 0, {}
        for item in filter(None, (s.strip() for s in (spec or "").split(","))):
            try:
                if "@" in item:
                    kind, _, when = item.partition("@")
                    step, _, secs = when.partition(":")
                    if kind not in ONCE:
                        raise ValueError
                    if kind == "latency":
                        secs, _, added = secs.partition(":")
                        extra[int(step.removeprefix("step"))] = _delay(added.strip().lower())
                        if not _seconds(extra[int(step.removeprefix("step"))]) or not secs:
                            raise FaultSpecError(f"bad --faults item {item!r}: latency@STEP:SECONDS:DELAY needs "
                                                 "a DELAY >= 0 such as 20ms, e.g. latency@step10:5s:20ms")
                    step, secs = int(step.removeprefix("step")), float(secs.rstrip("s") or 0)
                    if step < 0 or not _seconds(secs):
                        raise FaultSpecError(f"bad --faults item {item!r}: {RANGES}")
                    at[step] = (kind, secs)
                else:
                    kind, _, value = item.partition("=")
                    if kind == "seed":
                        seed = int(value)
                    elif kind == "slow":
                        rates[kind] = (float(value), 0.0)
                        if not (math.isfinite(rates[kind][0]) and rates[kind][0] >= 1):
                            raise FaultSpecError(f"bad --faults item {item!r}: slow=FACTOR needs a finite FACTOR >= 1")
                    elif kind in RATES:
                        p, _, secs = value.partition(":")
                        rates[kind] = (float(p), float(secs.rstrip("s") or 0))
                        if not (0 <= rates[kind][0] <= 1 and _seconds(rates[kind][1])):
                            raise FaultSpecError(f"bad --faults item {item!r}: {RANGES}")
                    else:
                        raise ValueError
            except FaultSpecError:
                raise
            except ValueError:
                raise FaultSpecError(f"bad --faults item {item!r}: use {HELP}") from None
        plan = cls(at, rates, seed, echo, stream, sleep)
        plan.extra = extra
        if at or rates:
            echo(f"fault injection: {spec} (seed {seed}, stream {stream!r})")
        return plan

    def _due(self, step: int, kinds) -> tuple | None:
        """The one-shot fault of `kinds` set for this step or an earlier one this worker never saw (under
        SSP and ASP a worker gets only some batches: it fires at the first one from STEP on)..."""
        self.first_step = min(getattr(self, "first_step", step), step)
        # ... but not in a worker started after STEP (a restart): it never ran the step the fault is for
        for at in sorted(s for s in self.at if self.first_step <= s <= step and s not in self.fired
                         and self.at[s][0] in kinds):
            self.fired.add(at)
            self.due_step = at
            self.echo(f"fault injection: {self.at[at][0]} at step {step}")
            return self.at[at]
        return None

    def before_compute(self, step: int, rank: int) -> None:
        fault = self._due(step, ("kill", "crash", "stop", "hang", "partition", "latency"))
        if fault is None:
            return
        kind, secs = fault
        if kind == "latency":  # launch --link watches for this line (parsgd.jobs.emulate) and slows the link
            added = self.extra[self.due_step]
            self.echo(f"fault injection: latency at step {step} for {secs:g} s: +{added:g} s")
            self.sleep(LATENCY_SETTLE_S)
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif kind == "crash":
            raise SystemExit(1)
        elif kind == "stop":
            subprocess.Popen([sys.executable, "-c",
                              f"import os, signal, time; time.sleep({secs}); os.kill({os.getpid()}, signal.SIGCONT)"],
                             start_new_session=True)
            os.kill(os.getpid(), signal.SIGSTOP)
        elif kind == "hang":
            self.sleep(secs)
        elif kind == "partition":  # launch --link watches for this line (parsgd.jobs.emulate) and pulls the cable
            self.echo(f"fault injection: partition at step {step} for {secs:g} s")
            self.sleep(PARTITION_SETTLE_S)

    def corrupt(self, step: int, rank: int, grad) -> None:
        """Every attempt at the step, not once: a reassigned shard fails again if it comes back here."""
        fault = self.at.get(step)
        if fault and fault[0] in ("nan", "inf"):
            self.echo(f"fault injection: {fault[0]} at step {step}")
            grad[0] = float(fault[0])

    def after_push(self, step: int) -> bool:
        """Right after the GRAD for `step` was handed to the socket: killpush / cutpush SIGKILL the
        process; returns True when the worker must go deaf (never read its socket again)."""
        fault = self._due(step, ("killpush", "cutpush", "deaf"))
        if fault is None:
            return False
        kind, secs = fault
        if kind == "deaf":
            return True
        if kind == "killpush":
            self.sleep(secs or KILLPUSH_WAIT_S)
        os.kill(os.getpid(), signal.SIGKILL)
        return False

    def mangle(self, step: int, grad_msg, workers: int):
        """wrongshard / wrongsize: the GRAD for `step` made into one a broken worker would send."""
        fault = self._due(step, ("wrongshard", "wrongsize"))
        if fault is None:
            return grad_msg
        if fault[0] == "wrongshard":
            return dataclasses.replace(grad_msg, shard=(grad_msg.shard + 1) % workers)
        payload = grad_msg.grad if grad_msg.grad is not None else np.zeros(2)
        return dataclasses.replace(grad_msg, grad=np.ascontiguousarray(payload[:-1]))

    def straggle(self, compute_s: float) -> None:
        """slow=FACTOR: every shard's compute takes FACTOR times as long (a straggler, every step)."""
        if "slow" in self.rates:
            self.sleep((self.rates["slow"][0] - 1) * compute_s)

    def drop_task(self) -> bool:
        """True to ignore the TASK just received (a lost TASK), with probability droptask."""
        return "droptask" in self.rates and self.rng.random() < self.rates["droptask"][0]

    def outgoing(self, step: int, rank: int) -> range:
        """How many copies of this GRAD to send: 0 (dropped), 1, or 2 (duplicated)."""
        copies = 1
        if "drop" in self.rates and self.rng.random() < self.rates["drop"][0]:
            copies = 0
        elif "dup" in self.rates and self.rng.random() < self.rates["dup"][0]:
            copies = 2
        if "delay" in self.rates and self.rng.random() < self.rates["delay"][0]:
            self.sleep(self.rates["delay"][1])
        return range(copies)


def parse_launch_faults(spec: str, workers: int, colocated: bool = False) -> dict[int, str]:
    """'kill=worker1@step40,stop=worker2@step60:5s,drop=0.1' -> {worker index: its --faults text}.

    `kind=workerN@WHEN` goes to worker N only; items without a worker go to every worker; workers
    with no item are left out. Every per-worker text is parsed as the worker will parse it, so a bad
    schedule is refused before anything starts. Raises FaultSpecError (a usage error, exit 2) naming
    the item: a worker not written workerN, an index outside 0..workers-1 (1..workers-1 when worker 0
    is `colocated` in the server's process, which takes no faults), or an item FaultPlan refuses.
    """
    first = 1 if colocated else 0
    per: dict[int, list[str]] = {i: [] for i in range(first, workers)}
    for item in filter(None, (s.strip() for s in (spec or "").split(","))):
        kind, _, rest = item.partition("=")
        if kind == "slow" and rest.startswith("worker"):  # slow=workerN:FACTOR
            rest = rest.replace(":", "@", 1)
        if rest.startswith("worker"):
            who, _, when = rest.partition("@")
            try:
                i = int(who.removeprefix("worker"))
            except ValueError:
                raise FaultSpecError(f"bad --faults item {item!r}: name a worker as workerN") from None
            if i not in per:
                raise FaultSpecError(f"bad --faults item {item!r}: there are workers {first}..{workers - 1}"
                                     + (" (worker 0 is colocated in the server's process)" if colocated else ""))
            per[i].append(f"slow={when}" if kind == "slow" else f"{kind}@{when}")
        else:
            for items in per.values():
                items.append(item)
    out = {i: ",".join(items) for i, items in per.items() if items}
    for text in out.values():
        FaultPlan.parse(text, echo=lambda _: None)
    return out
