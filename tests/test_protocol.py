"""Wire protocol: round trips, zero copy, a real DEALER<->ROUTER pair, and a fuzzed decoder.

    python -m pytest tests/test_protocol.py -q
"""
import dataclasses
import math

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parsgd.config import RunConfig
from parsgd.ps import protocol as proto
from parsgd.ps.protocol import ProtocolError


def spans(k=3):
    s = np.zeros((k, proto.SPAN_COLUMNS))
    s[:, 0] = np.arange(k) % len(proto.SPANS)
    s[:, 1:5] = np.arange(k * 4).reshape(k, 4)
    s[:, 5] = np.arange(k) % 3 - 1   # the server a span talked to, -1: none
    return s


PARAMS = np.linspace(-1, 1, 1000, dtype=np.float32)
HELLO = proto.Hello("0.1.0", proto.PROTOCOL_VERSION, "host-a", 1234, 17.25, 2**63 - 1, name="w0")
READY = proto.Ready(3, 7, "sha256:abc", 60000, 10000, dataset="mnist", data_dtype="float64")
TASK = proto.Task(3, 7, 10, 1, 0, 0, 128, 128, 5.0, PARAMS)
TASK_SHM = proto.Task(3, 7, 10, 1, 0, 0, 128, 128, 5.0, None)
GRAD = proto.Grad(3, 7, 10, 0, 0, 128, 128, 291.5, 100, 0.0015, PARAMS * 2)
HEARTBEAT = proto.Heartbeat(0, 0)
LOGS = proto.Logs(3, 7, 2, spans())
MESSAGES = [
    HELLO, READY, TASK, TASK_SHM, GRAD, HEARTBEAT, LOGS,
    proto.Hello("0.1.0", proto.PROTOCOL_VERSION, "host-a", 1234, 0, 5),
    proto.Welcome(3, 2**62, 1, RunConfig().to_dict(), 100.5, 1.0, 3, shm="/psm_1"),
    proto.Ready(3, 7, "sha256:abc", 60000, 10000, shm=True),   # dataset "" and float32
    proto.Task(3, 7, 10, 1, 0, 0, 128, 128, 5.0, np.arange(4, dtype=np.float64)),
    proto.Grad(3, 7, 10, 0, 0, 128, 128, math.nan, 0, 0.0, None),
    proto.Grad(3, 7, 10, 0, 5, 6, 1, -math.inf, 1, 2, np.zeros(0, np.float32)),
    proto.Logs(3, 7, 2, spans(0)),
    proto.Stop(3, "training finished " * 10),
    proto.Error("VERSION", "protocol 2 != 1"),
    # protocol 4: S servers (docs/protocol.md section 15)
    proto.Welcome(3, 7, 1, RunConfig(servers=3).to_dict(), 1.0, 1.0, 3, servers=["tcp://h:1", "ipc:///tmp/s"]),
    proto.Grad(3, 7, 10, 0, 0, 128, 128, 1.0, 1, 0.0, None, False, [4, 5]),
    proto.Error("STALE", "unknown session", answers="PULL"),
    proto.ServerHello("0.1.0", proto.PROTOCOL_VERSION, "host-b", 99, 11, 2, "tcp://198.18.0.3:40000"),
    proto.ServerWelcome(3, 11, RunConfig(servers=3).to_dict(), 40, 2.5, 1.0, 3, np.zeros(8, np.float32)),
    proto.Attach(3, 7, 1, "host-a"),
    proto.Attached(7, 2, "parsgd_1_2"),
    proto.Pull(3, 7, 10),
    proto.Params(7, 10, 10, 0.5, PARAMS),
    proto.Params(7, 10, 10, 0.5, None),
    proto.Push(3, 7, 10, 1, PARAMS),
    proto.Push(3, 7, 10, 1, None),
    # protocol 5: --compress (docs/protocol.md section 17): encoded bytes, GRAD.ef_seq
    proto.Push(3, 7, 10, 1, np.arange(13, dtype=np.uint8)),
    proto.Grad(3, 7, 10, 0, 0, 128, 128, 1.0, 1, 0.0, np.arange(9, dtype=np.uint8), True, [], 4),
    proto.Ack(7, 10, 1, True),
    proto.Apply(3, 10, [7, 0, 9], 0.05),
    proto.Fetch(3, 10, True),
    proto.State(3, 11, 10, False, PARAMS),
    proto.Forget(3, 7),
    # protocol 5: --overlap (docs/protocol.md section 16)
    proto.Part(3, 7, 10, 1, 200, 1200, PARAMS),
    proto.Part(3, 7, 10, 0, 0, 4, np.arange(4, dtype=np.float64)),
    proto.Welcome(3, 7, 1, RunConfig(overlap="bucket", bucket_bytes=4096).to_dict(), 1.0, 1.0, 3),
]


def header_of(msg):
    return msgpack.unpackb(msg.to_frames()[0])


def frames_with(header, msg=None):
    rest = msg.to_frames()[1:] if msg is not None else []
    return [msgpack.packb(header, use_bin_type=True), *rest]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: m.TYPE)
def test_round_trip_no_copy(msg):
    frames = msg.to_frames()
    assert len(frames) == 1 + (msg.payload() is not None)
    if len(frames) == 2:
        assert frames[1] is msg.payload() or frames[1].base is msg.payload()  # the array goes on the wire
    back = proto.decode(frames)
    assert back == msg and type(back) is type(msg)
    assert type(msg).from_frames(frames) == msg
    if msg.payload() is not None:
        assert np.shares_memory(back.payload(), msg.payload()) or msg.payload().size == 0
        assert back.payload().nbytes == msg.payload().nbytes
    assert proto.frames_nbytes(frames) == len(frames[0]) + (0 if msg.payload() is None else msg.payload().nbytes)
    # from bytes too: the array is a view of the received buffer
    as_bytes = [bytes(memoryview(f).cast("B")) if i else f for i, f in enumerate(frames)]
    back = proto.decode(as_bytes)
    if len(frames) == 2 and msg.payload().size:
        assert back.payload().base is not None and not back.payload().flags.owndata


def test_from_frames_checks_type():
    with pytest.raises(ProtocolError, match="expected TASK"):
        proto.Task.from_frames(proto.Heartbeat(1, 2).to_frames())


@pytest.fixture
def pair():
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    for s in (router, dealer):
        s.linger = 0
        s.rcvtimeo = 5000
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    yield router, dealer
    router.close()
    dealer.close()
    ctx.term()


def test_over_zmq_both_ways(pair):
    router, dealer = pair
    for msg in MESSAGES:
        dealer.send_multipart(msg.to_frames(), copy=False)
        frames = proto.recv_frames(router, max_frames=3, max_bytes=1 << 20)
        assert all(isinstance(f, zmq.Frame) for f in frames)
        identity, back = frames[0], proto.decode(frames[1:])
        assert back == msg
        if msg.payload() is not None and msg.payload().size:
            assert np.shares_memory(back.payload(), np.frombuffer(frames[2].buffer, np.uint8))
        router.send_multipart([identity, *back.to_frames()], copy=False)
        assert proto.decode(proto.recv_frames(dealer, 2, 1 << 20)) == msg


def test_recv_frames_drains_endless_multipart(pair):
    router, dealer = pair
    dealer.send_multipart([b"x"] * 1000)
    dealer.send_multipart(proto.Heartbeat(1, 2).to_frames())
    with pytest.raises(ProtocolError, match="too many frames"):
        proto.recv_frames(router, max_frames=3, max_bytes=1 << 20)
    assert proto.decode(proto.recv_frames(router, 3, 1 << 20)[1:]) == proto.Heartbeat(1, 2)


def test_recv_frames_refuses_too_many_bytes(pair):
    router, dealer = pair
    dealer.send_multipart([b"h", b"a" * 5000, b"b" * 5000])
    dealer.send_multipart(proto.Task(1, 2, 3, 0, 0, 0, 4, 4, 0.0, PARAMS).to_frames(), copy=False)
    with pytest.raises(ProtocolError, match="bytes"):
        proto.recv_frames(router, max_frames=10, max_bytes=8000)
    back = proto.decode(proto.recv_frames(router, 3, 8000)[1:])
    assert np.array_equal(back.params, PARAMS)


def test_foreign_version_hello_decodes():
    other = proto.PROTOCOL_VERSION + 1
    header = header_of(HELLO) | {"v": other, "protocol": other, "new_field": [1]}
    hello = proto.decode([msgpack.packb(header)])
    assert isinstance(hello, proto.Hello) and hello.protocol == other and hello.package_version == "0.1.0"
    garbled = {"v": 7, "type": "HELLO", "pid": -1}
    assert proto.decode([msgpack.packb(garbled)]) == proto.Hello("", 7, "", 0, 0.0, 0, "")


def test_other_messages_with_foreign_version_raise_version_mismatch():
    header = header_of(READY) | {"v": proto.PROTOCOL_VERSION + 1}
    with pytest.raises(proto.VersionMismatch) as info:
        proto.decode([msgpack.packb(header)])
    assert info.value.version == proto.PROTOCOL_VERSION + 1


def test_payload_length_dtype_and_shape_rejected():
    task = TASK
    frames = task.to_frames()
    with pytest.raises(ProtocolError, match="payload"):
        proto.decode([frames[0], frames[1][:-1]])
    with pytest.raises(ProtocolError, match="payload"):
        proto.decode([frames[0], b""])
    for dtype in ("<f4", "int8", "float16", "object", 3):
        with pytest.raises(ProtocolError, match="dtype"):
            proto.decode(frames_with(header_of(task) | {"dtype": dtype}, task))
    for n in (-1, proto.MAX_ELEMENTS + 1, 2**64 - 1, 1.0, True):
        with pytest.raises(ProtocolError):
            proto.decode(frames_with(header_of(task) | {"n": n}, task))
    with pytest.raises(ProtocolError, match="frames"):
        proto.decode(frames[:1])                          # header announces a payload that is missing
    with pytest.raises(ProtocolError, match="frames"):
        proto.decode(TASK_SHM.to_frames() + [b""])     # payload nobody announced
    with pytest.raises(ProtocolError, match="frames"):
        proto.decode(frames + [b""])
    bad_spans = spans()
    bad_spans[0, 0] = len(proto.SPANS)
    bad_server = spans()
    bad_server[0, 5] = -2   # the server column: -1 (none) or a server rank
    for arr in (bad_spans, bad_server, np.full((1, 6), 0.5), np.full((1, 6), np.nan), spans().astype(np.float32)):
        with pytest.raises(ProtocolError):
            proto.Logs(1, 1, 0, arr).to_frames()
        header = header_of(LOGS) | {"n": arr.size, "dtype": arr.dtype.name}
        with pytest.raises(ProtocolError):
            proto.decode([msgpack.packb(header), arr])
    with pytest.raises(ProtocolError, match="k x 6"):
        proto.decode([msgpack.packb(header_of(LOGS) | {"n": 4}), np.zeros(4)])


def test_encode_refuses_what_decode_would_refuse():
    for msg in (proto.Task(1, 1, 1, 1, 0, 5, 5, 5, 0.0, None),              # empty row range
                proto.Grad(1, 1, 1, 0, 0, 4, 3, 0.0, 0, 0.0, None),       # count != hi - lo
                proto.Grad(1, 1, 1, 0, 0, 4, 4, 0.0, 5, 0.0, None),       # correct > count
                proto.Heartbeat(True, 1), proto.Heartbeat(-1, 1), proto.Heartbeat(2**63, 1),
                proto.Task(1, 1, 1, 1, 0, 0, 5, 5, math.inf, None),
                proto.Task(1, 1, 1, 1, 0, 0, 5, 5, 0.0, PARAMS[::2]),        # not contiguous
                proto.Task(1, 1, 1, 1, 0, 0, 5, 5, 0.0, PARAMS.astype(">f4")),
                proto.Task(1, 1, 1, 1, 0, 0, 5, 5, 0.0, PARAMS.reshape(10, 100)),
                proto.Task(1, 1, 1, 1, 0, 0, 5, 5, 0.0, [1.0]),
                proto.Welcome(1, 1, 0, {"x": "y" * 9000}, 0.0, 1.0, 3),
                proto.Welcome(1, 1, 0, {1: 2}, 0.0, 1.0, 3),
                proto.Welcome(1, 1, 0, {"a": {"b": {"c": {"d": 1}}}}, 0.0, 1.0, 3),
                proto.Welcome(1, 1, 0, {f"k{i}": i for i in range(65)}, 0.0, 1.0, 3),
                proto.Welcome(1, 1, 0, {"lr": math.nan}, 0.0, 1.0, 3),
                proto.Welcome(1, 1, 0, {"t": (1, 2)}, 0.0, 1.0, 3),
                proto.Welcome(1, 1, 0, {}, 0.0, 0.0, 3),
                proto.Welcome(1, 1, 0, {}, 0.0, 1.0, 0),
                proto.Stop(1, "x" * 1025), proto.Error("x" * 257, ""),
                proto.Hello("0.1.0", proto.PROTOCOL_VERSION + 1, "h", 1, 0.0, 1)):
        with pytest.raises(ProtocolError):
            msg.to_frames()


# --- fuzzing the decoder ---------------------------------------------------------------------

def decode_or_protocol_error(frames):
    try:
        proto.decode(frames)
    except ProtocolError:
        pass


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200), st.one_of(st.none(), st.binary(max_size=64)))
def test_random_bytes_only_raise_protocol_error(header, payload):
    decode_or_protocol_error([header] if payload is None else [header, payload])


leaves = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(),
                   st.text(max_size=20), st.binary(max_size=20), st.sampled_from(list(proto.TYPES)))
objects = st.recursive(leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.one_of(st.text(max_size=10), st.sampled_from(
        ["v", "type", "n", "dtype", "session", "step", "config"])), inner, max_size=6)), max_leaves=30)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(objects, st.booleans())
def test_random_msgpack_objects_only_raise_protocol_error(obj, with_v):
    if with_v and isinstance(obj, dict):
        obj = {**obj, "v": proto.PROTOCOL_VERSION}
    decode_or_protocol_error([msgpack.packb(obj, use_bin_type=True)])
    decode_or_protocol_error([msgpack.packb(obj, use_bin_type=True), b"\0" * 8])


BAD_VALUES = [None, True, False, -1, 2**63, 2**64 - 1, -2**63, 1.5, math.nan, "7", b"7", [1], {"a": 1},
              "x" * 257, "x" * 1025]
FLOAT_LOWER_BOUND = {"t_send": -math.inf, "t_server": -math.inf, "loss_sum": -math.inf,
                     "heartbeat_s": 0, "compute_s": -0.5}   # value must be > this
STRING_MAX = {"name": 256, "host": 256, "package_version": 256, "fingerprint": 256, "shm": 256, "dataset": 256,
              "code": 256, "reason": 1024, "message": 1024, "answers": 256, "faults": 1024}


def still_valid(msg, key, value):
    """The few replacements from BAD_VALUES that are legitimately accepted."""
    if key == "v":
        return msg.TYPE == "HELLO" and type(value) is int     # foreign-version HELLO decodes
    if key == "lr":  # APPLY's learning rate: any finite float >= 0 (docs/protocol.md section 15)
        return type(value) in (int, float) and math.isfinite(value) and value >= 0
    if key in FLOAT_LOWER_BOUND and type(value) in (int, float):
        return key == "loss_sum" or (math.isfinite(value) and value > FLOAT_LOWER_BOUND[key])
    if type(getattr(msg, key, None)) is bool:
        return type(value) is bool
    if key == "code":
        return value in proto.ERROR_CODES
    if key in STRING_MAX:
        return type(value) is str and len(value) <= STRING_MAX[key]
    if key in ("servers", "versions"):  # lists: of addresses (NAME), of versions (INT)
        return type(value) is list and not value
    if key == "sessions":  # APPLY: a non-empty list of session ids ([1] is one)
        return type(value) is list and bool(value) and all(type(v) is int and v >= 0 for v in value)
    return key == "config" and type(value) is dict


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(MESSAGES), st.data())
def test_mutated_valid_headers_rejected(msg, data):
    header = header_of(msg)
    key = data.draw(st.sampled_from(sorted(header)))
    mutation = data.draw(st.sampled_from(["drop", "add", "value"]))
    if mutation == "drop":
        del header[key]
    elif mutation == "add":
        header[data.draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in header))] = 0
    else:
        header[key] = value = data.draw(st.sampled_from(BAD_VALUES))
        if still_valid(msg, key, value):
            proto.decode(frames_with(header, msg))
            return
    with pytest.raises(ProtocolError):
        proto.decode(frames_with(header, msg))


def test_bool_field_refuses_ints():
    header = header_of(proto.Ready(1, 1, "f", 1, 1, shm=True))
    for value in (1, 0, None, "true"):
        with pytest.raises(ProtocolError, match="bool"):
            proto.decode([msgpack.packb(header | {"shm": value})])


@pytest.mark.parametrize("key", ["session", "incarnation", "step", "lo", "hi", "count", "n"])
@pytest.mark.parametrize("value", [True, -1, 2**64 - 1, 1.0])
def test_int_fields_refuse_bools_negatives_huge_and_floats(key, value):
    msg = GRAD
    with pytest.raises(ProtocolError):
        proto.decode(frames_with(header_of(msg) | {key: value}, msg))


def test_header_over_header_max_refused_even_if_otherwise_valid():
    welcome = proto.Welcome(1, 1, 0, {f"k{i}": "x" * 1000 for i in range(9)}, 0.0, 1.0, 3)
    with pytest.raises(ProtocolError, match="bytes >"):
        welcome.to_frames()
    header = msgpack.packb({"v": 1, "type": "WELCOME", **{f.name: getattr(welcome, f.name)
                                                          for f in dataclasses.fields(welcome)}})
    assert len(header) > proto.HEADER_MAX
    with pytest.raises(ProtocolError, match="bytes >"):
        proto.decode([header])


def test_hostile_headers_rejected():
    ok = header_of(HEARTBEAT)
    cases = {
        "deep nesting 10^4": b"\x91" * 10_000 + b"\x00",
        "deep nesting under the size cap": b"\x91" * (proto.HEADER_MAX - 1) + b"\x00",
        "oversized": msgpack.packb(ok | {"pad": "x" * proto.HEADER_MAX}),
        "ext type": msgpack.packb(ok | {"session": msgpack.ExtType(5, b"abc")}),
        "timestamp ext": msgpack.packb(ok | {"session": msgpack.Timestamp(1, 0)}, datetime=False),
        "int map key": msgpack.packb({1: 2, **ok}, strict_types=False),
        "bytes map key": msgpack.packb({b"v": 1, "type": "HEARTBEAT", "incarnation": 0, "session": 0},
                                       use_bin_type=True),
        "trailing bytes": msgpack.packb(ok) + b"\x00",
        "truncated": msgpack.packb(ok)[:-1],
        "not a map": msgpack.packb([ok]),
        "unknown type": msgpack.packb(ok | {"type": "PICKLE"}),
        "v as str": msgpack.packb(ok | {"v": "1"}),
        "v as bool": msgpack.packb(ok | {"v": True}),
        "pickle bytes": b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01.",
        "huge array": b"\xdd\xff\xff\xff\xff",
        "huge map": b"\xdf\xff\xff\xff\xff",
        "huge str": b"\xdb\xff\xff\xff\xff",
        "bad utf8": msgpack.packb(ok | {"type": b"\xff\xfe"}, use_bin_type=False),
    }
    for name, header in cases.items():
        with pytest.raises(ProtocolError):
            proto.decode([header])
        with pytest.raises(ProtocolError):
            proto.decode([zmq.Frame(header)])
    for frames in ([], [b""], "abc", [object()], [b"\x80"] * 3, None):
        with pytest.raises(ProtocolError):
            proto.decode(frames)


def test_task_batch_and_error_code_are_checked():
    """TASK carries its batch's rows (protocol 2): a shard larger than its batch, or batch 0, is refused;
    an ERROR code outside ERROR_CODES is refused."""
    assert proto.decode(proto.Task(1, 1, 1, 1, 0, 0, 5, 96, 0.0, None).to_frames()).batch == 96
    for bad in (proto.Task(1, 1, 1, 1, 0, 0, 5, 4, 0.0, None), proto.Task(1, 1, 1, 1, 0, 0, 5, 0, 0.0, None),
                proto.Error("NOT_REGISTERED", "x")):
        with pytest.raises(ProtocolError):
            bad.to_frames()


def test_ready_names_the_data_it_describes():
    """READY carries the dataset name and dtype (protocol 2), so a mismatch can be named without the
    server's fingerprint; both are required fields, and the dtype is float32 or float64 only."""
    assert header_of(READY)["dataset"] == "mnist" and header_of(READY)["data_dtype"] == "float64"
    for key in ("dataset", "data_dtype"):
        header = header_of(READY)
        del header[key]
        with pytest.raises(ProtocolError, match="missing fields"):
            proto.decode([msgpack.packb(header)])
    for dtype in ("float16", "<f8", "", 64):
        with pytest.raises(ProtocolError, match="data_dtype"):
            proto.decode([msgpack.packb(header_of(READY) | {"data_dtype": dtype})])
        with pytest.raises(ProtocolError):
            dataclasses.replace(READY, data_dtype=dtype).to_frames()
