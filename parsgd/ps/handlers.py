"""What the server does with each message (the table `HANDLERS`, type -> function) and on its timer.

    python -m pytest tests/test_ps.py tests/test_faults.py -q

Each handler is `handle(srv, identity, msg, frames, t)`: `srv` is the ParameterServer, `identity`
the sender's routing id, `msg` the decoded message, `frames` the raw frames (for byte counts), `t`
when it was received (server clock, s). Handlers decide through `srv.members` (who is this?) and
`srv.scheduler` (is this owed?) and act through the server's send / drop / assign. A message type
missing from the table is a protocol error (a worker never sends TASK, WELCOME or STOP).
"""
from __future__ import annotations

import dataclasses
import numpy as np

from parsgd import __version__
from parsgd.ps import protocol as proto
from parsgd.ps.scheduler import NOT_OWED, ServerExit


def _fenced(srv, identity: bytes, msg, any_identity: bool = False):
    """The member whose live session sent `msg`, or None after telling the sender it is stale."""
    member = srv.members.fenced(identity, msg.session, any_identity) if msg.incarnation == srv.incarnation else None
    if member is None and not any_identity:
        srv.events.limited("stale", type=type(msg).__name__, session=msg.session, step=getattr(msg, "step", None))
        srv.router.reply_error(identity, "STALE", "unknown or expired session: register again", msg.TYPE)
    return member


def on_hello(srv, identity: bytes, msg: proto.Hello, frames, t: float) -> None:
    if srv.rangeset is not None and not srv.rangeset.complete():
        return  # its WELCOME must name every range server: it sends HELLO again in a second
    if msg.protocol != proto.PROTOCOL_VERSION or msg.package_version != __version__:
        text = (f"server runs parsgd {__version__} (protocol {proto.PROTOCOL_VERSION}), worker runs parsgd "
                f"{msg.package_version} (protocol {msg.protocol}): install the same version on both")
        srv.events.limited("refused", reason="version", peer=identity.hex(), detail=text)
        srv.router.reply_error(identity, "VERSION", text, "HELLO")
        return
    old = srv.members.of_identity(identity)
    if old is not None and old.session != msg.session:
        srv.drop(old, "registered again")
    member = srv.members.get(msg.session)
    if member is None:
        for stale, reason in srv.members.overdue():
            if not stale.ready:
                srv.drop(stale, reason)
        evict, room = srv.members.room_for()
        for oldest in evict:  # a HELLO flood: the oldest newcomer makes room
            srv.drop(oldest, "too many peers registering at once")
        if not room:
            srv.router.reply_error(identity, "BUSY", "the server has as many workers as it takes", "HELLO")
            return
        member = srv.members.admit(identity, msg.session, msg.host, msg.pid, msg.name)
        if srv.opts.shm and msg.host == srv.host and srv.cfg.overlap == "none":  # --overlap: PARTs on the socket
            try:
                member.buf = srv.segments.create(msg.session)
            except OSError as exc:  # /dev/shm full or the name taken: the payload goes through the socket
                srv.events("shm_unavailable", session=msg.session, error=str(exc))
        srv.events.limited("hello", rank=member.rank, session=msg.session, host=msg.host, pid=msg.pid,
                           name=msg.name)
    srv.send(member, proto.Welcome(srv.incarnation, member.session, member.rank, srv.cfg.to_dict(),
                                   srv.log.now(), srv.opts.heartbeat_s, srv.opts.liveness,
                                   member.buf.name if member.buf else "",
                                   srv.rangeset.addresses() if srv.rangeset is not None else []))


def on_ready(srv, identity: bytes, msg: proto.Ready, frames, t: float) -> None:
    member = _fenced(srv, identity, msg)
    if member is None or member.ready:
        return
    differs = data_differences(srv, msg)
    if differs:
        text = (f"worker {member.rank} on {member.host} loaded different data than the server: "
                f"{'; '.join(differs)}: give it the same dataset files, --data-dir and parsgd version")
        srv.events("refused", reason="data_mismatch", rank=member.rank, detail=text)
        srv.echo(f"turned away worker {member.rank}: {text}")
        srv.router.reply_error(identity, "DATA_MISMATCH", text, "READY")
        srv.forget(member, close_now=True)
        return
    if member.buf is not None:
        member.buf.unlink()  # both sides have it mapped: the name is no longer needed
        if not msg.shm:
            member.buf.close()
            member.buf = None
    srv.members.mark_ready(member)
    srv.events("join", rank=member.rank, session=member.session, host=member.host, pid=member.pid,
               shm=member.buf is not None, generation=srv.members.generation, step=srv.step, faults=msg.faults)
    recorded = srv.rundir.setup.get("worker_faults") or {}
    if msg.faults and recorded.get(str(member.rank)) != msg.faults:  # a straggler's run must say so
        srv.rundir.record_setup(worker_faults={**recorded, str(member.rank): msg.faults})
    srv.echo(f"worker {member.rank} joined from {member.host} pid {member.pid}"
             f"{' (shared memory)' if member.buf else ''}: {len(srv.members.live())} live")
    if srv.scheduler.cur is not None:
        for s in srv.scheduler.unowned():
            srv.assign(s)


def data_differences(srv, msg: proto.Ready) -> list[str]:
    """What differs between the server's data and a READY's: dataset name, rows, dtype, else bytes.

    The fingerprint guards against accidents (other files, --num-samples, dtype), not against a
    lying worker; the server's fingerprint is never sent, so a worker with other rows cannot copy it.
    """
    data = srv.data
    ours = {"dataset": data.name, "training rows": srv.n_train, "test rows": len(data.y_test),
            "dtype": data.x_train.dtype.name}
    theirs = {"dataset": msg.dataset, "training rows": msg.n_train, "test rows": msg.n_test,
              "dtype": msg.data_dtype}
    out = [f"{what} {theirs[what]!r} (server: {ours[what]!r})" for what in ours if theirs[what] != ours[what]]
    if not out and msg.fingerprint != srv.fingerprint:
        out.append("the same dataset name, rows and dtype, but other bytes (other files, or data "
                   "made by another parsgd version)")
    return out


def on_grad(srv, identity: bytes, msg: proto.Grad, frames, t: float) -> None:
    member = _fenced(srv, identity, msg)
    if member is None:
        return
    member.owes.discard((msg.step, msg.shard))  # answered, whether it is still owed or not
    # Another TASK is queued at this worker: its next computation may write this shared-memory slot
    # while the server still reads it (the sum, the update), so the slot is copied first.
    busy_again = bool(member.owes) or member.resent > 0
    member.resent = max(0, member.resent - 1)
    st = srv.scheduler.cur
    # Logged under the step in progress: a late or made-up GRAD's own step may be long gone or never come.
    srv.log.add("recv", st.step if st is not None else srv.step, t, proto.frames_nbytes(frames[1:]))
    why = srv.scheduler.check(member.session, msg.step, msg.shard, msg.lo, msg.hi)
    if why == NOT_OWED:
        strike(srv, identity, f"GRAD for step {msg.step} shard {msg.shard} rows [{msg.lo}, {msg.hi}): {why}",
               answers="GRAD")
        return
    if why is not None:
        srv.events.limited("ignored_grad", rank=member.rank, step=msg.step, shard=msg.shard, why=why)
        return
    t = srv.log.now()
    s = msg.shard
    if (msg := _decoded(srv, identity, msg)) is None:
        return
    if member.buf is not None and not busy_again:
        src = member.buf.slots[s]  # read in place: the worker writes it again only after a new TASK
    elif member.buf is not None:
        np.copyto(srv.shard_grads[s], member.buf.slots[s])
        src = srv.shard_grads[s]
    elif msg.grad is not None and msg.grad.size == srv.shard_grads.shape[1] and msg.grad.dtype == srv.params.dtype:
        np.copyto(srv.shard_grads[s], msg.grad)
        src = srv.shard_grads[s]
    elif msg.grad is None and (member.session, msg.step, s) in srv.staged:  # S servers: its PUSH came first
        src = srv.staged.pop((member.session, msg.step, s))
    elif msg.grad is None and getattr(srv, "parts", None) is not None:  # --overlap: its PARTs came first
        src = srv.parts.take((member.session, msg.step, s))
        if src is None:
            strike(srv, identity, f"GRAD of step {msg.step} shard {s} before PARTs covering it", answers="GRAD")
            return
        np.copyto(srv.shard_grads[s], src)
        srv.parts.give_back(src)
        src = srv.shard_grads[s]
    else:
        strike(srv, identity, f"GRAD payload does not match the model ({srv.shard_grads.shape[1]} x {srv.params.dtype})",
               answers="GRAD")
        return
    srv.log.add("deserialize", msg.step, t)
    srv.gradient_in(srv.scheduler.key(msg.step, s), src, msg)


def on_push(srv, identity: bytes, msg: proto.Push, frames, t: float) -> None:
    """--servers S: a worker's part of a shard's gradient for this server, sent with its parts for the range
    servers, ahead of its GRAD on the same connection (so in order): kept until that GRAD comes."""
    member = _fenced(srv, identity, msg)
    if member is None:
        return
    srv.log.add("recv", msg.step, t, proto.frames_nbytes(frames[1:]))
    if (msg := _decoded(srv, identity, msg)) is None:
        return
    own = srv.shard_grads.shape[1]
    if msg.grad is None or msg.grad.size != own or msg.grad.dtype != srv.params.dtype or srv.rangeset is None:
        strike(srv, identity, f"PUSH of {getattr(msg.grad, 'size', 0)} values: this server holds {own} and takes "
               "them only with --servers above 1", answers="PUSH")
        return
    if len(srv.staged) > 2 * srv.n_shards + 8:  # a dead worker's parts, late ones: only current steps stay
        srv.staged = {k: v for k, v in srv.staged.items() if k[1] >= srv.step}
    srv.staged[(member.session, msg.step, msg.shard)] = np.array(msg.grad, copy=True)


def on_part(srv, identity: bytes, msg: proto.Part, frames, t: float) -> None:
    """--overlap: a part of a shard's gradient, ahead of its GRAD on the same connection (ps/overlap.py)."""
    member = _fenced(srv, identity, msg)
    if member is None:
        return
    srv.log.add("recv", msg.step, t, proto.frames_nbytes(frames[1:]))
    if getattr(srv, "parts", None) is None:
        strike(srv, identity, "PART: this server runs with --overlap none", answers="PART")
        return
    st = srv.scheduler.cur  # late parts (a shard since reassigned, an old step) are not kept
    if st is None or msg.shard >= len(st.shards) or srv.scheduler.check(
            member.session, msg.step, msg.shard, *st.shards[msg.shard]) is not None:
        return
    why = srv.parts.add((member.session, msg.step, msg.shard), msg.lo, msg.hi, msg.values)
    if why is not None:
        strike(srv, identity, why, answers="PART")


def _decoded(srv, identity: bytes, msg):
    """GRAD / PUSH with its payload decoded (--compress, ps/compression.py), as it is without; None after
    a strike when the payload is not this run's encoding."""
    if srv.codec is None or msg.grad is None:
        return msg
    try:
        return dataclasses.replace(msg, grad=srv.codec.decoded(msg.TYPE, msg.grad, msg.step, msg.shard))
    except proto.ProtocolError as exc:
        strike(srv, identity, str(exc), answers=msg.TYPE)
        return None


def on_pull(srv, identity: bytes, msg: proto.Pull, frames, t: float) -> None:
    """--servers S: a worker pulls this server's part (from its data socket, like any range server's),
    under BSP for the current step only (STALE else), under ssp / async as it is now."""
    member = _fenced(srv, identity, msg, any_identity=True)
    if member is None or srv.rangeset is None:
        srv.router.reply_error(identity, "STALE", "unknown session, or one server only: register again", "PULL")
        return
    srv.log.add("recv", msg.step, t, proto.frames_nbytes(frames[1:]))
    if srv.cfg.consistency == "bsp" and msg.step != srv.step:
        srv.router.reply_error(identity, "STALE", f"step {msg.step} is not the current step {srv.step}", "PULL")
        return
    part = srv.send_buf if srv.cfg.consistency == "bsp" else srv.own_params().copy()  # BSP: copied once a step
    reply = proto.Params(member.session, msg.step, srv.step, srv.log.now(), part)
    t = srv.log.now()
    try:
        srv.log.add("send", msg.step, t, srv.router.send(identity, reply))
    except Exception:  # zmq.ZMQError: the data socket is gone; the worker's gather gives up on its own
        pass


def on_heartbeat(srv, identity: bytes, msg: proto.Heartbeat, frames, t: float) -> None:
    member = _fenced(srv, identity, msg, any_identity=True)  # from the worker's heartbeat socket too
    why = srv.members.not_reading(member, msg.tasks, msg.busy) if member is not None else None
    if why is not None:  # idle and alive, yet deaf: demoted; it registers again once it reads
        srv.drop(member, why)


def on_logs(srv, identity: bytes, msg: proto.Logs, frames, t: float) -> None:
    member = _fenced(srv, identity, msg)
    if member is None:
        return
    if len(msg.spans):
        srv.log_chunks.setdefault(member.rank, []).append(np.array(msg.spans, copy=True))
        srv.comm.worker(member.rank, msg.spans)  # on disk now: an interrupted run keeps it
    else:  # the empty chunk ends a worker's logs: it is leaving, which is no death
        chunks = srv.log_chunks.pop(member.rank, [])
        srv.worker_logs[member.rank] = np.concatenate(chunks) if chunks else np.zeros((0, proto.SPAN_COLUMNS))
        srv.drop(member, "left", left=True)  # mid-run (a signal), its unfinished shards go to others


def on_error(srv, identity: bytes, msg: proto.Error, frames, t: float) -> None:
    member = srv.members.of_identity(identity)
    if member is None:
        strike(srv, identity, f"ERROR {msg.code} from a peer that is not a worker", answers="ERROR")
        return
    srv.events("worker_error", code=msg.code, message=msg.message)
    srv.echo(f"worker {member.rank} reported: {msg.message}")
    srv.drop(member, f"worker error {msg.code}")


def strike(srv, identity: bytes, error: str, severe: bool = False, answers: str = "") -> None:
    """A bad message (of type `answers`, "" when it could not be decoded): dropped. A member gets ERROR
    BAD_MESSAGE naming that type; a stranger may be quarantined."""
    registered = srv.members.of_identity(identity) is not None
    srv.events.limited("protocol_error", peer=identity.hex(), error=error, registered=registered)
    if registered:
        srv.router.reply_error(identity, "BAD_MESSAGE", error, answers)
    elif srv.members.strike(identity, severe):
        srv.events.limited("quarantine", peer=identity.hex())


def on_timer(srv, now: float) -> None:
    """Run every TIMERS_MAX_S: expiry, heartbeats to idle members, step timeouts, the no-worker wait."""
    for member, reason in srv.members.overdue():
        srv.drop(member, reason)
    for member in [m for m in srv.members.members.values() if m.gone]:
        srv.drop(member, member.gone)
    if now >= srv._next_heartbeat:
        # A busy worker reads no message until its TASK is done: pings would only fill its queue
        # until a send fails. Its own heartbeat thread shows it is alive; it is pinged when idle.
        for member in [m for m in srv.members.members.values() if not m.busy()]:
            srv.send(member, proto.Heartbeat(srv.incarnation, member.session))
        srv._next_heartbeat = now + srv.opts.heartbeat_s
        if srv.rangeset is not None:
            srv.rangeset.timer(now)
    for s, owner in srv.scheduler.overdue(srv.opts.step_timeout_s):
        rank = srv.members.get(owner).rank
        srv.events("step_timeout", step=srv.scheduler.cur.step, shard=s, rank=rank)
        srv.echo(f"shard {s} of step {srv.scheduler.cur.step} took over {srv.opts.step_timeout_s:g} s "
                  f"on worker {rank}: reassigning it")
        srv.assign(s, avoid=owner)
    if srv.members.live() or srv.scheduler.cur is None:
        srv.no_workers_since = None
    elif srv.no_workers_since is None:
        srv.no_workers_since = now
        srv.echo(f"no workers left: waiting up to {srv.opts.wait_timeout_s:g} s for one to join")
    elif now - srv.no_workers_since > srv.opts.wait_timeout_s:
        raise ServerExit(f"no workers for {srv.opts.wait_timeout_s:g} s at step {srv.step}"
                         f"{srv.opts.continue_hint(srv.step, srv.rundir.path)}")


def on_non_finite(srv, s: int, owner: int | None) -> None:
    """Shard s of the current step came back with a NaN or Inf (from session `owner`)."""
    member = srv.members.get(owner) if owner is not None else None
    srv.events("non_finite_grad", step=srv.scheduler.cur.step, shard=s, rank=member.rank if member else None)


HANDLERS = {proto.Hello: on_hello, proto.Ready: on_ready, proto.Grad: on_grad, proto.Push: on_push, proto.Part: on_part,
            proto.Pull: on_pull, proto.Heartbeat: on_heartbeat, proto.Logs: on_logs, proto.Error: on_error}
