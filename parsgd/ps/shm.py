"""Same-host payload path: one shared-memory segment per worker session.

Layout (float array of the run's dtype): [params (n) | gradient slot for shard 0 (n) | ... | shard N-1].
The server creates the segment at WELCOME and writes the parameters into it before each TASK;
the worker writes each shard's gradient into that shard's slot and sends a GRAD without payload.
ZeroMQ still carries every message. The name is unlinked as soon as the worker has attached (READY)
or gone, so a SIGKILLed process leaves nothing in /dev/shm except during a registration handshake;
`sweep_stale` removes those leftovers of dead servers on the next start.
"""
from __future__ import annotations

import mmap
import os
import re
import socket
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np

PREFIX = "parsgd"
SHM_ROOT = "/dev/shm"             # where Linux keeps POSIX shared-memory names
_NAME = re.compile(rf"^{PREFIX}_(\d+)_[0-9a-f]+$")


def host_identity() -> str:
    """Who can share memory with whom: the host name plus the network namespace, e.g.
    `vm/net:[4026531840]`. Emulated hosts (network namespaces on one machine) share the host name
    but are separate hosts to parsgd: no shared-memory path across them."""
    try:
        netns = os.readlink("/proc/self/ns/net")
    except OSError:
        netns = "net:?"
    return f"{socket.gethostname()}/{netns}"


class SessionBuffer:
    """A worker session's segment, mapped as params + per-shard gradient slots."""

    def __init__(self, shm: shared_memory.SharedMemory, n: int, shards: int, dtype, owner: bool):
        self.shm, self.owner = shm, owner
        self.array = np.ndarray(((shards + 1) * n,), dtype=dtype, buffer=shm.buf)
        self.params = self.array[:n]
        self.slots = self.array[n:].reshape(shards, n)
        self.name = shm.name
        self.unlinked = False
        self.step = -1  # server side: the step whose parameters `params` holds

    @classmethod
    def create(cls, session: int, n: int, shards: int, dtype) -> "SessionBuffer":
        size = (shards + 1) * n * np.dtype(dtype).itemsize
        shm = shared_memory.SharedMemory(name=f"{PREFIX}_{os.getpid()}_{session:x}", create=True, size=size)
        return cls(shm, n, shards, dtype, owner=True)

    @classmethod
    def attach(cls, name: str, n: int, shards: int, dtype) -> "SessionBuffer":
        """Map the server's segment `name`; raises ValueError (not parsgd's, or smaller than the
        model) or OSError (gone, no permission)."""
        if not _NAME.match(name):
            raise ValueError(f"not a parsgd shared-memory name: {name!r}")
        shm = _Attached(name)
        if shm.size < (shards + 1) * n * np.dtype(dtype).itemsize:
            shm.close()
            raise ValueError(f"shared-memory segment {name} is smaller than the model")
        return cls(shm, n, shards, dtype, owner=False)

    def unlink(self) -> None:
        """Remove the name; the mapping stays valid for both sides until they close it."""
        if self.owner and not self.unlinked:
            self.unlinked = True
            try:
                self.shm.unlink()
            except FileNotFoundError:
                pass

    def close(self) -> None:
        self.unlink()
        self.params = self.slots = self.array = None
        try:
            self.shm.close()
        except BufferError:  # a view is still alive somewhere; the OS frees it at exit
            pass


class _Attached:
    """A segment mapped by name, as multiprocessing.shared_memory would map it but without its
    resource tracker: that starts a helper process (~8 MB) in every worker just to be told to
    forget the name, and a tracker must never unlink the server's segment."""

    def __init__(self, name: str):
        fd = os.open(f"{SHM_ROOT}/{name}", os.O_RDWR | os.O_CLOEXEC)
        try:
            self.size = os.fstat(fd).st_size
            self._map = mmap.mmap(fd, self.size)  # ValueError for an empty file
        finally:
            os.close(fd)
        self.buf, self.name = memoryview(self._map), name

    def close(self) -> None:
        """Unmap; raises BufferError while an array still views it (the OS unmaps it at exit)."""
        self.buf.release()
        self._map.close()


class Segments:
    """The server's segments: one per same-host member, loaded once per step, closed when safe.

    A removed member's segment is unlinked at once but closed only at the end of the step
    (`close_retired`), since a finished shard of that step may still point into its gradient slot.
    """

    def __init__(self, n: int, shards: int, dtype):
        self.n, self.shards, self.dtype = n, shards, dtype
        self.retired: list[SessionBuffer] = []

    def create(self, session: int) -> SessionBuffer:
        """A segment for `session`; raises OSError when /dev/shm is full or the name is taken."""
        return SessionBuffer.create(session, self.n, self.shards, self.dtype)

    @staticmethod
    def load(buf: SessionBuffer, step: int, params: np.ndarray) -> bool:
        """Copy `params` (n,) into buf for `step` unless it holds them already; True if it copied."""
        if buf.step == step:
            return False
        np.copyto(buf.params, params)
        buf.step = step
        return True

    def release(self, buf: SessionBuffer, now: bool = False) -> None:
        buf.unlink()
        if now:
            buf.close()
        else:
            self.retired.append(buf)

    def close_retired(self) -> None:
        while self.retired:
            self.retired.pop().close()


def sweep_stale(root: str = SHM_ROOT) -> int:
    """Unlink parsgd segments whose creating process is gone; returns how many."""
    removed = 0
    folder = Path(root)
    if not folder.is_dir():
        return 0
    for path in folder.iterdir():
        m = _NAME.match(path.name)
        if m and not _pid_alive(int(m.group(1))):
            try:
                path.unlink()
                removed += 1
            except OSError:
                pass
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
