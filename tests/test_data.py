"""Data loading against real files and a real HTTP server on loopback; no mocks.

    python -m pytest tests/test_data.py -q
"""
from __future__ import annotations

import gzip
import hashlib
import os
import re
import socket
import struct
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import parsgd.data.idx
import parsgd.data.load
import parsgd.data.mnist
from parsgd import data
from parsgd.data import DataError, load_dataset, read_idx, write_idx

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
STEMS = data.SET_FILES


def write_set(folder: Path, seed=0, n_train=60, n_test=20, gz=True) -> dict[str, np.ndarray]:
    """Writes a small MNIST-format set (random pixels and labels) and returns its arrays by file stem."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for stem, n in zip(STEMS, (n_train, n_train, n_test, n_test)):
        shape = (n, 28, 28) if "images" in stem else (n,)
        arrays[stem] = rng.integers(0, 256 if "images" in stem else 10, shape, dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        write_idx(folder / (stem + ".gz" if gz else stem), array)
    return arrays


def assert_is(ds, arrays, dtype=np.float32):
    """`ds` holds exactly `arrays` (as written by write_set), scaled and typed as promised."""
    expected = [arrays[s] for s in STEMS]
    for x, y, images, labels in ((ds.x_train, ds.y_train, *expected[:2]), (ds.x_test, ds.y_test, *expected[2:])):
        assert x.dtype == dtype and y.dtype == np.int64
        assert x.flags.c_contiguous and y.flags.c_contiguous
        np.testing.assert_array_equal(x, (images.reshape(len(images), 784) / 255).astype(dtype))
        np.testing.assert_array_equal(y, labels)


# ---- IDX ----------------------------------------------------------------------------------------

def test_read_idx_follows_the_format_byte_by_byte(tmp_path):
    cases = [
        (bytes([0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(6)), [[0, 1, 2], [3, 4, 5]]),
        (bytes([0, 0, 0x0B, 1, 0, 0, 0, 2]) + b"\x01\x02\xff\xfe", [258, -2]),  # big-endian int16
        (bytes([0, 0, 0x0D, 1, 0, 0, 0, 2]) + struct.pack(">2f", 1.5, -2.0), [1.5, -2.0]),
    ]
    for i, (raw, expected) in enumerate(cases):
        (tmp_path / f"{i}.idx").write_bytes(raw)
        (tmp_path / f"{i}.gz").write_bytes(gzip.compress(raw))
        for path in (tmp_path / f"{i}.idx", tmp_path / f"{i}.gz"):
            assert read_idx(path).tolist() == expected


@pytest.mark.parametrize("dtype", ["u1", "i1", ">i2", "<i4", "f4", "f8"])
@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_write_then_read_idx_roundtrips(tmp_path, dtype, name):
    array = (np.arange(2 * 3 * 5) - 7).astype(dtype).reshape(2, 3, 5)
    write_idx(tmp_path / name, array)
    back = read_idx(tmp_path / name)
    assert back.dtype.isnative and back.shape == (2, 3, 5) and back.flags.writeable
    np.testing.assert_array_equal(back, array)
    first = (tmp_path / name).read_bytes()
    write_idx(tmp_path / name, array)
    assert (tmp_path / name).read_bytes() == first  # gzip with a fixed mtime: reproducible files


def _images_idx(n=10, payload=None) -> bytes:
    return bytes([0, 0, 8, 3]) + struct.pack(">3I", n, 28, 28) + (bytes(n * 784) if payload is None else payload)


def _flip_byte(raw: bytes, at: int) -> bytes:
    return raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1:]


BROKEN_FILES = {
    "truncated.idx": (_images_idx(payload=bytes(1000)), "truncated IDX file (expected 7856 bytes, got 1016)"),
    "trailing.idx": (_images_idx() + b"xx", "trailing bytes"),
    "magic.idx": (b"\x12\x34" + _images_idx()[2:], "not an IDX file"),
    "empty.idx": (b"", "not an IDX file"),
    "typecode.idx": (bytes([0, 0, 7, 1, 0, 0, 0, 1, 0]), "unknown IDX type code 0x07"),
    "ndim.idx": (bytes([0, 0, 8, 0]), "0 dimensions"),
    "header.idx": (bytes([0, 0, 8, 3, 0, 0]), "truncated IDX header"),
    "garbage.gz": (b"\x1f\x8b" + b"not deflate data at all" * 3, "corrupt or truncated gzip"),
    "truncated.gz": (gzip.compress(_images_idx())[:-30], "corrupt or truncated gzip"),
    "bitflip.gz": (_flip_byte(gzip.compress(_images_idx(payload=bytes(range(256)) * 30 + bytes(160))), 20),
                   "corrupt or truncated gzip"),
    # a gzip header, then a deflate block of the reserved type 3: zlib.error
    "badblock.gz": (bytes([0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 0, 0xFF, 0x07]) + bytes(20), "invalid block type"),
    "badcrc.gz": (_flip_byte(gzip.compress(_images_idx()), -6), "CRC check failed"),
    "missing.idx": (None, "no such file"),
}


@pytest.mark.parametrize("name", sorted(BROKEN_FILES))
def test_broken_idx_files_raise_one_line_data_errors(tmp_path, name):
    raw, expected = BROKEN_FILES[name]
    path = tmp_path / name
    if raw is not None:
        path.write_bytes(raw)
    with pytest.raises(DataError) as err:
        read_idx(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message
    assert err.value.__cause__ is None and (err.value.__context__ is None or err.value.__suppress_context__)


@pytest.mark.parametrize("change, expected", [
    (lambda a: a.update({STEMS[1]: a[STEMS[1]][:-1]}), "60 images but train-labels-idx1-ubyte.gz has 59 labels"),
    (lambda a: a.update({STEMS[0]: a[STEMS[0]][:, :, :27]}), "expected (n, 28, 28) ubyte images"),
    (lambda a: a.update({STEMS[2]: a[STEMS[2]].astype(np.int32)}), "expected (n, 28, 28) ubyte images"),
    (lambda a: a.update({STEMS[3]: a[STEMS[3]] + 10}), "labels in 0..9"),
    (lambda a: a.update({STEMS[1]: a[STEMS[1]].astype(np.int16)}), "labels in 0..9"),
])
def test_sets_that_are_not_mnist_shaped_are_refused(tmp_path, change, expected):
    arrays = write_set(tmp_path / "mnist")
    change(arrays)
    for stem, array in arrays.items():
        write_idx(tmp_path / "mnist" / f"{stem}.gz", array)
    with pytest.raises(DataError, match=re.escape(expected)):
        load_dataset("mnist", tmp_path)


# ---- local folders ------------------------------------------------------------------------------

@pytest.fixture
def no_system_fashion(monkeypatch):
    monkeypatch.setattr(parsgd.data.load, "FASHION_SYSTEM_DIRS", ())
    monkeypatch.setenv("PARSGD_NO_DOWNLOAD", "1")


def test_mnist_from_data_dir_mnist_and_from_data_dir_itself(tmp_path, no_system_fashion):
    arrays = write_set(tmp_path / "a" / "mnist", seed=1)
    logs = []
    ds = load_dataset("auto", tmp_path / "a", log=logs.append)
    assert (ds.name, ds.source) == ("mnist", str(tmp_path / "a" / "mnist"))
    assert_is(ds, arrays)
    assert logs == [f"dataset: mnist from {tmp_path / 'a' / 'mnist'} (60 train / 20 test rows)"]
    raw = write_set(tmp_path / "b", seed=2, gz=False)  # un-gzipped files directly in the data dir
    ds = load_dataset("mnist", tmp_path / "b", dtype="float64")
    assert ds.source == str(tmp_path / "b")
    assert_is(ds, raw, np.float64)


def test_auto_prefers_mnist_then_fashion(tmp_path, no_system_fashion):
    fashion = write_set(tmp_path / "fashion-mnist", seed=3)
    logs = []
    ds = load_dataset("auto", tmp_path, log=logs.append)
    assert ds.name == "fashion-mnist"
    assert_is(ds, fashion)
    assert "because there is no MNIST in" in logs[0]
    mnist = write_set(tmp_path / "mnist", seed=4)
    assert_is(load_dataset("auto", tmp_path), mnist)
    assert_is(load_dataset("fashion-mnist", tmp_path), fashion)


def test_missing_or_unknown_datasets_name_the_fix(tmp_path, no_system_fashion):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", tmp_path)
    with pytest.raises(DataError, match="PARSGD_NO_DOWNLOAD.*copy the 4 MNIST .gz files into"):
        load_dataset("mnist", tmp_path)
    with pytest.raises(DataError, match="unknown dataset 'cifar'"):
        load_dataset("cifar", tmp_path)
    with pytest.raises(DataError, match="use float32 or float64"):
        load_dataset("synthetic", tmp_path, dtype="int8")
    logs = []
    assert load_dataset("auto", tmp_path, num_samples=100, log=logs.append).name == "synthetic"
    assert "no MNIST or Fashion-MNIST is available here" in logs[0] and "PARSGD_NO_DOWNLOAD" in logs[0]


def test_fashion_mnist_from_the_debian_package(tmp_path, monkeypatch):
    if not DEBIAN_FASHION.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{DEBIAN_FASHION} is missing on CI: apt-get install dataset-fashion-mnist")
        pytest.skip(f"{DEBIAN_FASHION} missing: apt-get install dataset-fashion-mnist")
    assert str(DEBIAN_FASHION) in parsgd.data.load.FASHION_SYSTEM_DIRS
    monkeypatch.setenv("PARSGD_NO_DOWNLOAD", "1")
    logs = []
    ds = load_dataset("auto", tmp_path, log=logs.append)  # an empty data dir: only the system folder
    assert (ds.name, ds.source) == ("fashion-mnist", str(DEBIAN_FASHION))
    assert logs[0].startswith(f"dataset: fashion-mnist from {DEBIAN_FASHION} (60000 train / 10000 test rows)")
    assert ds.x_train.shape == (60000, 784) and ds.x_test.shape == (10000, 784)
    assert ds.x_train.dtype == np.float32 and ds.x_train.flags.c_contiguous
    assert ds.x_train.min() == 0 and ds.x_train.max() == 1
    assert np.bincount(ds.y_train).tolist() == [6000] * 10 and np.bincount(ds.y_test).tolist() == [1000] * 10


# ---- download -----------------------------------------------------------------------------------

@pytest.fixture
def web(tmp_path, monkeypatch):
    """A real HTTP server on 127.0.0.1 serving tmp_path/www; yields (base url, www dir, requested paths)."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    www, requested = tmp_path / "www", []
    www.mkdir()

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(www), **kwargs)

        def do_GET(self):
            requested.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", www, requested
    server.shutdown()
    server.server_close()
    thread.join()


def mirror_set(www: Path, seed=5):
    """Serves a good set under good/, a corrupted copy under bad/; returns (arrays, name -> sha256)."""
    arrays = write_set(www / "good", seed=seed)
    (www / "bad").mkdir()
    hashes = {}
    for path in (www / "good").iterdir():
        hashes[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        (www / "bad" / path.name).write_bytes(path.read_bytes()[:-1] + b"!")
    return arrays, hashes


def dead_url() -> str:
    with socket.socket() as s:  # a port that was just free: nothing listens there
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/"


def test_download_verifies_caches_and_loads(tmp_path, web, no_system_fashion):
    base, www, requested = web
    arrays, hashes = mirror_set(www)
    logs = []
    dest = data.download_mnist(tmp_path / "cache" / "mnist", [base + "good/"], 5.0, logs.append, hashes)
    assert sorted(p.name for p in dest.iterdir()) == sorted(hashes)  # no temp files left
    assert len(logs) == 4 and all("SHA256 ok" in line for line in logs)
    assert_is(load_dataset("mnist", tmp_path / "cache"), arrays)
    data.download_mnist(dest, [base + "good/"], 5.0, None, hashes)
    assert len(requested) == 4  # verified files in the cache are not fetched again


def test_download_falls_through_missing_and_corrupt_mirrors(tmp_path, web):
    base, www, requested = web
    arrays, hashes = mirror_set(www)
    mirrors = [dead_url(), base + "missing/", base + "bad/", base + "good/"]
    dest = data.download_mnist(tmp_path / "mnist", mirrors, 5.0, None, hashes)
    assert_is(parsgd.data.idx.load_folder("mnist", dest, None, 0, np.float32), arrays)
    assert sorted(requested) == sorted(f"/{m}/{name}" for m in ("missing", "bad", "good") for name in hashes)


def test_a_stale_cached_file_is_replaced_atomically(tmp_path, web):
    """The new file is renamed over the old one: a reader holding the old file never sees a mix."""
    base, www, _ = web
    arrays, hashes = mirror_set(www)
    target = tmp_path / "mnist" / STEMS[0]
    target.parent.mkdir()
    target.with_suffix(".gz").write_bytes((www / "bad" / f"{STEMS[0]}.gz").read_bytes())
    with open(target.with_suffix(".gz"), "rb") as reader:
        data.download_mnist(tmp_path / "mnist", [base + "good/"], 5.0, None, hashes)
        assert reader.read() == (www / "bad" / f"{STEMS[0]}.gz").read_bytes()
    assert target.with_suffix(".gz").read_bytes() == (www / "good" / f"{STEMS[0]}.gz").read_bytes()
    assert sorted(p.name for p in target.parent.iterdir()) == sorted(hashes)


def test_bad_checksum_everywhere_leaves_nothing_behind(tmp_path, web):
    base, www, _ = web
    _, hashes = mirror_set(www)
    with pytest.raises(DataError, match=r"no good copy of .*bad/.*: wrong SHA256.*good/.*: wrong SHA256"):
        data.download_mnist(tmp_path / "mnist", [base + "bad/", base + "good/"], 5.0, None,
                            parsgd.data.mnist.MNIST_FILES)
    assert list((tmp_path / "mnist").iterdir()) == []
    with pytest.raises(DataError, match="HTTP 404"):
        data.download_mnist(tmp_path / "mnist", [base + "missing/"], 5.0, None, hashes)
    assert list((tmp_path / "mnist").iterdir()) == []


def test_unreachable_mirrors_say_offline_and_auto_falls_back(tmp_path, monkeypatch, no_system_fashion):
    with pytest.raises(DataError, match="seems offline: copy the 4 MNIST .gz files into .*--dataset synthetic"):
        data.download_mnist(tmp_path / "mnist", [dead_url(), dead_url()], 5.0)
    assert list((tmp_path / "mnist").iterdir()) == []
    monkeypatch.delenv("PARSGD_NO_DOWNLOAD")
    monkeypatch.setattr(parsgd.data.mnist, "MNIST_MIRRORS", (dead_url(),))
    logs = []
    ds = load_dataset("auto", tmp_path, num_samples=300, log=logs.append)
    assert (ds.name, len(ds.y_train), len(ds.y_test)) == ("synthetic", 300, 10_000)
    assert "seems offline" in logs[0]
    with pytest.raises(DataError, match="seems offline"):
        load_dataset("mnist", tmp_path)


def test_auto_downloads_mnist_when_nothing_is_local(tmp_path, web, monkeypatch, no_system_fashion):
    base, www, requested = web
    arrays, hashes = mirror_set(www)
    monkeypatch.setattr(parsgd.data.mnist, "MNIST_MIRRORS", (base + "good/",))
    monkeypatch.setattr(parsgd.data.mnist, "MNIST_FILES", hashes)
    assert load_dataset("auto", tmp_path).name == "synthetic"  # PARSGD_NO_DOWNLOAD=1: no request
    assert requested == []
    monkeypatch.delenv("PARSGD_NO_DOWNLOAD")
    logs = []
    ds = load_dataset("auto", tmp_path, log=logs.append)
    assert logs[-1].startswith(f"dataset: mnist downloaded into {tmp_path / 'mnist'}")
    assert_is(ds, arrays)
    assert_is(load_dataset("auto", tmp_path), arrays) and len(requested) == 4


# ---- synthetic ----------------------------------------------------------------------------------

def test_synthetic_is_deterministic_per_seed_and_well_formed():
    a, b, c = (data.make_synthetic(3000, 1000, seed) for seed in (7, 7, 8))
    for x, y in ((a.x_train, a.y_train), (a.x_test, a.y_test)):
        assert x.shape == (len(y), 784) and x.dtype == np.float32 and y.dtype == np.int64
        assert x.flags.c_contiguous and 0 <= x.min() and x.max() <= 1 and set(np.unique(y)) == set(range(10))
        assert np.abs(x * 255 - np.rint(x * 255)).max() < 1e-3  # quantized to k/255 like real images
        assert 0.05 < x.mean() < 0.3  # sparse like MNIST (0.13), so MNIST learning rates suit it
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes()
        assert not np.array_equal(getattr(a, name), getattr(c, name))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    wide = data.make_synthetic(5000, 1000, 7, dtype="float64")
    np.testing.assert_array_equal(wide.x_train[:3000].astype(np.float32), a.x_train)  # a prefix, same pixels
    np.testing.assert_array_equal(wide.y_test, a.y_test)  # the test set ignores n_train


def test_synthetic_bytes_do_not_depend_on_the_process_or_blas_threads():
    """Workers in other processes (other hosts) must get the same fingerprint as the server."""
    code = "from parsgd.data import make_synthetic; print(make_synthetic(5000, 100, 3).fingerprint())"
    prints = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "OPENBLAS_NUM_THREADS": n, "OMP_NUM_THREADS": n}).stdout
              for n in ("1", "2")}
    assert prints == {data.make_synthetic(5000, 100, 3).fingerprint() + "\n"}


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_synthetic_classes_are_balanced(seed):
    shares = np.bincount(data.make_synthetic(20_000, 0, seed).y_train, minlength=10) / 20_000
    assert shares.min() > 0.07 and shares.max() < 0.13, shares


def test_synthetic_is_learnable_but_not_trivial():
    """A small ReLU MLP with momentum SGD, written out here so the check does not depend on mlp.py."""
    ds = data.make_synthetic(4096, 2000, 42)
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((784, 128)) * np.sqrt(2 / 784), rng.standard_normal((128, 10)) * np.sqrt(2 / 128)
    params = [w1.astype(np.float32), np.zeros(128, np.float32), w2.astype(np.float32), np.zeros(10, np.float32)]
    velocity = [np.zeros_like(p) for p in params]

    def accuracy():
        return (np.maximum(ds.x_test @ params[0] + params[1], 0) @ params[2] + params[3]).argmax(1) == ds.y_test

    accuracies = []
    for epoch in range(2):
        for lo in range(0, 4096, 256):
            rows = data.epoch_order(4096, 0, epoch)[lo:lo + 256]
            x, y = ds.x_train[rows], ds.y_train[rows]
            hidden = np.maximum(x @ params[0] + params[1], 0)  # (256, 784) @ (784, 128) -> (256, 128)
            logits = hidden @ params[2] + params[3]
            dz = np.exp(logits - logits.max(1, keepdims=True))
            dz /= dz.sum(1, keepdims=True)
            dz[np.arange(len(y)), y] -= 1
            dz /= len(y)
            dh = (dz @ params[2].T) * (hidden > 0)
            for v, p, g in zip(velocity, params, (x.T @ dh, dh.sum(0), hidden.T @ dz, dz.sum(0))):
                v *= 0.9
                v += g
                p -= 0.1 * v
            accuracies.append(accuracy().mean())
    assert accuracies[0] < 0.5 and accuracies[-1] > 0.8, accuracies


# ---- order, fingerprint, subsampling, data dir ----------------------------------------------------

def test_epoch_order_is_a_seeded_permutation_per_epoch():
    order = data.epoch_order(1000, 42, 3)
    np.testing.assert_array_equal(np.sort(order), np.arange(1000))
    np.testing.assert_array_equal(order, np.random.default_rng([42, 3]).permutation(1000))
    np.testing.assert_array_equal(order, data.epoch_order(1000, 42, 3))
    assert not np.array_equal(order, data.epoch_order(1000, 42, 4))
    assert not np.array_equal(order, data.epoch_order(1000, 43, 3))


def test_fingerprint_sees_every_byte_name_and_dtype():
    ds = data.make_synthetic(200, 50, 1)
    fp = ds.fingerprint()
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert data.make_synthetic(200, 50, 1).fingerprint() == fp
    ds.x_test[49, 783] += 1 / 255
    assert ds.fingerprint() != fp
    ds.x_test[49, 783] -= 1 / 255
    assert ds.fingerprint() == fp
    ds.name = "mnist"
    assert ds.fingerprint() != fp
    assert data.make_synthetic(200, 50, 1, "float64").fingerprint() != fp


def test_num_samples_subsamples_train_only_and_deterministically(tmp_path, no_system_fashion):
    arrays = write_set(tmp_path / "mnist", n_train=60)
    full = load_dataset("mnist", tmp_path)
    sub = load_dataset("mnist", tmp_path, num_samples=25, seed=9)
    again = load_dataset("mnist", tmp_path, num_samples=25, seed=9)
    other = load_dataset("mnist", tmp_path, num_samples=25, seed=10)
    assert sub.fingerprint() == again.fingerprint() != other.fingerprint()
    rows = [int(np.flatnonzero((full.x_train == row).all(1))[0]) for row in sub.x_train]
    assert rows == sorted(set(rows)) and len(rows) == 25  # distinct rows of the full set, in order
    np.testing.assert_array_equal(sub.y_train, arrays[STEMS[1]][rows])
    np.testing.assert_array_equal(sub.x_test, full.x_test)
    assert sub.x_train.flags.c_contiguous
    with pytest.raises(DataError, match="use at most 60"):
        load_dataset("mnist", tmp_path, num_samples=61)
    with pytest.raises(DataError, match="at least 1"):
        load_dataset("mnist", tmp_path, num_samples=0)
    assert len(load_dataset("synthetic", tmp_path, num_samples=123).y_train) == 123


def test_default_data_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PARSGD_DATA_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.default_data_dir() == tmp_path / "explicit"
    monkeypatch.delenv("PARSGD_DATA_DIR")
    assert data.default_data_dir() == tmp_path / "xdg" / "parsgd"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data.default_data_dir() == Path.home() / ".cache" / "parsgd"
    monkeypatch.setenv("PARSGD_DATA_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("PARSGD_NO_DOWNLOAD", "1")
    write_set(tmp_path / "explicit" / "mnist")
    assert load_dataset("auto").source == str(tmp_path / "explicit" / "mnist")


def test_patchable_settings_live_only_in_their_module_and_imports_go_downward():
    """A patch aimed at parsgd.data must fail loudly, not leave the module that reads the setting unchanged."""
    for owner, names in ((parsgd.data.mnist, ("MNIST_MIRRORS", "MNIST_FILES", "DOWNLOAD_TIMEOUT")),
                         (parsgd.data.load, ("FASHION_SYSTEM_DIRS",))):
        for name in names:
            assert hasattr(owner, name) and not hasattr(data, name), name
    order = ["dataset", "cache", "idx", "mnist", "synthetic", "load"]
    for i, module in enumerate(order):
        source = (Path(data.__file__).parent / f"{module}.py").read_text()
        imported = set(re.findall(r"^from parsgd\.data(?:\.(\w+))? import \(?(\w+)", source, re.M))
        below = {m or name for m, name in imported}
        assert below <= set(order[:i]), (module, below)
