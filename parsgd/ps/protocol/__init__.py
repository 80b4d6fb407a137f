"""Wire protocol: the message types; with wire.py the only code that knows bytes. Servers and workers
speak in message objects (`to_frames` / `decode`): base.py (the base class, the registry, decode),
core.py (coordinator and workers: HELLO ... ERROR), ranges.py (range servers, `--servers S`), parts.py
(PART, `--overlap layer|bucket`).

    python -m pytest tests/test_protocol.py -q

Frame layout of one ZeroMQ multipart message:

    [identity]        ROUTER side only; the caller strips it before `decode`
    header            msgpack map {"v": PROTOCOL_VERSION, "type": "TASK", ...fields}
    [payload]         raw little-endian array bytes; the header then also carries
                      "dtype" ("float32" | "float64") and "n" (element count)

The payload is the numpy array itself in the frame list (send with `send_multipart(frames,
copy=False)`) and is rebuilt with `numpy.frombuffer` on the received buffer, without a copy.
TASK and GRAD carry a payload unless it travels through shared memory; LOGS always carries one.

Decoding validates everything and raises `ProtocolError` (a ValueError) for any input: header
size, msgpack well-formedness, version, type, the exact set of fields, field types and ranges,
frame count, dtype and payload length (checked before `frombuffer`). Encoding runs the same
field checks, so a sender never puts on the wire what a receiver would refuse.

Protocol 5 (this one) added PART (--overlap); 4 range servers (SHELLO ... FORGET; WELCOME.servers, GRAD.finite and
.versions, ERROR.answers); 3 READY.faults; 2 TASK.batch, HEARTBEAT.busy and
.tasks, READY.dataset and READY.data_dtype; versions are compared for equality. The specification is
docs/protocol.md.

Version choice: a header whose `v` differs from PROTOCOL_VERSION raises `VersionMismatch`,
except for HELLO: a foreign-version HELLO is decoded leniently (fields that do not check out
take neutral defaults) into a `Hello` whose `protocol` is the peer's `v`, so the server can
compare `hello.protocol` with PROTOCOL_VERSION and refuse it with an ERROR naming both versions.
"""
from __future__ import annotations

# Re-exported for the servers and workers: protocol is the one package they import for wire matters.
from parsgd.ps.protocol.base import (ERROR_CODES, PROTOCOL_VERSION, SPANS, TYPES, Message,  # noqa: F401
                                     decode)
from parsgd.ps.protocol.core import (SPAN_COLUMNS, Error, Grad, Heartbeat, Hello, Logs, Ready, Stop,  # noqa: F401
                                     Task, Welcome)
from parsgd.ps.protocol.parts import Part  # noqa: F401
from parsgd.ps.protocol.ranges import (Ack, Apply, Attach, Attached, Fetch, Forget, Params, Pull,  # noqa: F401
                                       Push, ServerHello, ServerWelcome, State)
from parsgd.ps.wire import (BOOL, DTYPES, HEADER_MAX, ID, INT, MAX_CONFIG_KEYS, MAX_ELEMENTS,  # noqa: F401
                            MAX_LIST, MAX_TEXT, NAME, TEXT, TIME, ProtocolError, VersionMismatch, config_map,
                            float_in, frame_buffer, frames_nbytes, int_in, payload_array, recv_frames, short)
