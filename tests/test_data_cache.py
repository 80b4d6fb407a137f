"""The decoded-data cache (parsgd.data.cache) with real files, processes and mounts; no mocks.

    python -m pytest tests/test_data_cache.py -q

Every test points PARSGD_CACHE_DIR at its own tmp folder (conftest.py already keeps the suite off the
user's cache). The mount tests need root (CI runs as root) and skip elsewhere.
"""
from __future__ import annotations

import fcntl
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from parsgd.data import cache, load_dataset, make_synthetic, write_idx
from parsgd.data.idx import SET_FILES, load_folder

ROOT = Path(__file__).resolve().parent.parent
ARRAYS = ("x_train", "y_train", "x_test", "y_test")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("PARSGD_CACHE_DIR", str(folder))
    return folder


def entries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def assert_same(got, want) -> None:
    """Equal arrays of equal dtypes, the same name and the same fingerprint."""
    assert got.name == want.name
    for name in ARRAYS:
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), name
    assert got.fingerprint() == want.fingerprint()


def write_set(folder: Path, seed=0, n_train=60, n_test=20) -> Path:
    """A small MNIST-format set of random pixels and labels."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for stem, n in zip(SET_FILES, (n_train, n_train, n_test, n_test)):
        images = "images" in stem
        write_idx(folder / f"{stem}.gz", rng.integers(0, 256 if images else 10, (n, 28, 28) if images else (n,),
                                                      dtype=np.uint8))
    return folder


def counting(build, calls: list):
    def counted():
        calls.append(1)
        return build()
    return counted


# ---- hits equal decoding -----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_hit_maps_exactly_what_decoding_gives(cache_dir, dtype):
    logs = []
    first = load_dataset("synthetic", num_samples=700, seed=5, dtype=dtype, log=logs.append)
    [entry] = entries(cache_dir)
    again = load_dataset("synthetic", num_samples=700, seed=5, dtype=dtype, log=logs.append)
    decoded = make_synthetic(700, 10_000, 5, dtype)
    assert_same(first, decoded)
    assert_same(again, decoded)
    assert again.source == decoded.source == "synthetic (seed 5)"
    assert logs == ["dataset: synthetic generated (700 train / 10000 test rows)"] * 2  # the cache adds no line
    assert json.loads((entry / "meta.json").read_text())["fingerprint"] == decoded.fingerprint()
    for name in ARRAYS:  # read-only views of the mapped file
        assert not getattr(again, name).flags.writeable and getattr(again, name).flags.c_contiguous
    with pytest.raises(ValueError, match="read-only"):
        again.x_train[0, 0] = 1
    idx = np.array([699, 3, 3, 0])
    rows = np.empty((4, 784), dtype)
    np.take(again.x_train, idx, axis=0, out=rows)  # the trainers' way of gathering a batch
    np.testing.assert_array_equal(rows, decoded.x_train[idx])


def test_a_hit_does_not_decode_and_a_folder_keeps_its_own_source(cache_dir, tmp_path):
    one, two = write_set(tmp_path / "a" / "mnist"), write_set(tmp_path / "b" / "mnist")  # same bytes
    calls = []
    key = {"name": "mnist", "files": cache.files_digest(one / f"{s}.gz" for s in SET_FILES)}
    build = counting(lambda: load_folder("mnist", one, None, 0, np.float32), calls)
    decoded = build()
    assert_same(cache.cached(key, build), decoded)
    assert_same(cache.cached(key, build, source=str(two)), decoded)
    assert len(calls) == 2  # the call above, then one miss; the hit decoded nothing
    a = load_dataset("mnist", tmp_path / "a", num_samples=30, seed=1)
    b = load_dataset("mnist", tmp_path / "b", num_samples=30, seed=1)
    assert (a.source, b.source) == (str(one), str(two))
    assert_same(a, load_folder("mnist", one, 30, 1, np.float32))
    assert_same(b, a)


def test_the_cache_can_be_turned_off_and_lives_where_users_expect(tmp_path, monkeypatch):
    monkeypatch.setenv("PARSGD_CACHE_DIR", "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() is None
    data = load_dataset("synthetic", num_samples=300, seed=2)
    assert data.x_train.flags.writeable and not (tmp_path / "xdg").exists()
    assert_same(data, make_synthetic(300, 10_000, 2))
    monkeypatch.setenv("PARSGD_CACHE_DIR", str(tmp_path / "mine"))
    assert cache.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("PARSGD_CACHE_DIR")
    assert cache.cache_dir() == tmp_path / "xdg" / "parsgd" / "decoded"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.cache_dir() == Path.home() / ".cache" / "parsgd" / "decoded"


# ---- keys -------------------------------------------------------------------------------------------

def test_what_changes_the_data_changes_the_entry(cache_dir, tmp_path):
    base = dict(num_samples=400, seed=3, dtype="float32")
    variants = [base, {**base, "num_samples": 401}, {**base, "seed": 4}, {**base, "dtype": "float64"}]
    for options in variants + [base]:
        load_dataset("synthetic", **options)
    assert len(entries(cache_dir)) == len(variants)  # the last load of `base` was a hit
    folder = write_set(tmp_path / "mnist")
    full = load_dataset("mnist", tmp_path, seed=1)
    assert_same(load_dataset("mnist", tmp_path, seed=2), full)  # the seed picks only a subsample
    assert len(entries(cache_dir)) == len(variants) + 1
    write_set(folder, seed=9)  # the same names, other bytes: a new entry, never the stale one
    changed = load_dataset("mnist", tmp_path)
    assert len(entries(cache_dir)) == len(variants) + 2 and changed.fingerprint() != full.fingerprint()
    assert_same(changed, load_folder("mnist", folder, None, 0, np.float32))


# ---- broken entries ----------------------------------------------------------------------------

def flip_byte(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))


def truncate(path: Path) -> None:
    os.truncate(path, os.path.getsize(path) - 4)


def other_key(path: Path) -> None:
    meta = json.loads(path.read_text())
    meta["key"]["seed"] = 999
    path.write_text(json.dumps(meta))


def object_dtype(path: Path) -> None:
    meta = json.loads(path.read_text())
    meta["arrays"]["x_train"]["dtype"] = "|O"
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize("damage,file,problem", [
    (flip_byte, "x_train.bin", "fails its CRC-32"),
    (flip_byte, "y_test.bin", "fails its CRC-32"),
    (truncate, "x_test.bin", "truncated"),
    (os.unlink, "y_train.bin", "cannot map y_train.bin"),
    (lambda p: p.write_text('{"format": 1, "ke'), "meta.json", "corrupt meta.json"),
    (lambda p: p.write_text("[]"), "meta.json", "corrupt meta.json"),
    (object_dtype, "meta.json", "corrupt meta.json"),
    (other_key, "meta.json", "does not match its key"),
])
def test_a_broken_entry_is_rebuilt_with_one_line(cache_dir, damage, file, problem):
    decoded = make_synthetic(500, 10_000, 6)
    load_dataset("synthetic", num_samples=500, seed=6)
    [entry] = entries(cache_dir)
    damage(entry / file)
    logs = []
    assert_same(load_dataset("synthetic", num_samples=500, seed=6, log=logs.append), decoded)
    assert len(logs) == 2 and problem in logs[0] and logs[0].endswith("rebuilding it"), logs
    assert "\n" not in logs[0]
    logs.clear()
    assert_same(load_dataset("synthetic", num_samples=500, seed=6, log=logs.append), decoded)
    assert len(logs) == 1  # whole again: only the dataset line
    assert not list(entry.glob(".*.tmp"))


# ---- many processes ------------------------------------------------------------------------------

CHILD = """
import sys, time
from parsgd.data import make_synthetic
from parsgd.data.cache import cached
def build():
    with open(sys.argv[1], "a") as f:
        f.write("built\\n")
    time.sleep(0.5)  # a slow decode: the others must wait for it, not decode too
    return make_synthetic(900, 10_000, 8)
data = cached({"name": "synthetic", "num_samples": 900, "seed": 8}, build, log=print)
print("ready", data.fingerprint(), flush=True)
sys.stdin.readline()
"""


def mapped_inodes(pid: int, path: Path) -> set[int]:
    """Inodes of `path` in /proc/PID/maps (field 5 of a line ending in the path)."""
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {int(line.split()[4]) for line in lines if line.endswith(str(path))}


def test_processes_started_together_decode_once_and_map_one_file(cache_dir, tmp_path):
    counter = tmp_path / "builds"
    env = {**os.environ, "PARSGD_CACHE_DIR": str(cache_dir)}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(counter)], cwd=ROOT, env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for _ in range(4)]
    try:
        lines = [p.stdout.readline() for p in procs]
        expected = make_synthetic(900, 10_000, 8).fingerprint()
        assert lines == [f"ready {expected}\n"] * 4, lines
        assert counter.read_text() == "built\n"
        [entry] = entries(cache_dir)
        inode = os.stat(entry / "x_train.bin").st_ino
        for p in procs:
            assert mapped_inodes(p.pid, entry / "x_train.bin") == {inode}
            assert mapped_inodes(p.pid, entry / "x_test.bin") == {os.stat(entry / "x_test.bin").st_ino}
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=30)
            p.stdout.close()


def test_a_lock_held_too_long_means_decoding_in_memory(cache_dir, monkeypatch):
    monkeypatch.setattr(cache, "LOCK_WAIT_S", 0.2)
    key = {"name": "synthetic", "num_samples": 300, "seed": 1}
    entry = cache.entry_path(cache_dir, cache.full_key(key))
    cache_dir.mkdir()
    fd = os.open(f"{entry}.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as another process building this entry would
        logs = []
        data = cache.cached(key, lambda: make_synthetic(300, 50, 1), logs.append)
    finally:
        os.close(fd)
    assert_same(data, make_synthetic(300, 50, 1))
    assert len(logs) == 1 and "held" in logs[0] and logs[0].endswith("decoding in memory (PARSGD_CACHE_DIR=DIR "
                                                                       "picks another folder, =off none)"), logs
    assert not entry.exists()


# ---- folders that cannot be written ---------------------------------------------------------------

def mount(*args) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    if result.returncode:
        pytest.skip(f"mount {' '.join(args)}: {result.stderr.strip()}")


def unmount(path: Path) -> None:
    gc.collect()  # arrays mapped from the mount keep it busy
    if subprocess.run(["umount", str(path)], capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(path)], check=True)


def test_a_read_only_cache_folder_serves_its_entries_and_else_decodes_in_memory(cache_dir):
    load_dataset("synthetic", num_samples=400, seed=1)  # an entry made while it was writable
    mount("--bind", str(cache_dir), str(cache_dir))
    try:
        mount("-o", "remount,ro,bind", str(cache_dir))
        logs = []
        hit = load_dataset("synthetic", num_samples=400, seed=1, log=logs.append)
        assert len(logs) == 1 and not hit.x_train.flags.writeable  # mapped from the read-only folder
        assert_same(hit, make_synthetic(400, 10_000, 1))
        del hit
        missing = load_dataset("synthetic", num_samples=401, seed=1, log=logs.append)
        assert_same(missing, make_synthetic(401, 10_000, 1))
        assert missing.x_train.flags.writeable  # decoded in memory, as without a cache
        assert len(logs) == 3 and logs[1].startswith("data cache skipped (cannot write ") and \
            "Read-only file system" in logs[1] and logs[1].endswith("=off none)"), logs
        assert len(entries(cache_dir)) == 1
    finally:
        unmount(cache_dir)


@pytest.mark.parametrize("rows", [500, 50])
def test_a_full_cache_folder_decodes_in_memory_and_leaves_nothing(cache_dir, rows):
    """A 256 KB folder: 500 rows' x_train (1.5 MB) does not fit; 50 rows' (157 KB) does, then x_test
    (31 MB) does not, and the x_train.bin already written must not stay without its meta.json."""
    cache_dir.mkdir()
    mount("-t", "tmpfs", "-o", "size=256k", "tmpfs", str(cache_dir))
    try:
        logs = []
        data = load_dataset("synthetic", num_samples=rows, seed=1, log=logs.append)
        assert_same(data, make_synthetic(rows, 10_000, 1))
        assert len(logs) == 2 and "No space left on device" in logs[0] and "decoding in memory" in logs[0], logs
        assert [p.name for p in cache_dir.rglob("*") if p.is_file() and not p.name.endswith(".lock")] == []
    finally:
        unmount(cache_dir)


def test_a_killed_writers_temp_file_is_swept_when_the_entry_is_rebuilt(cache_dir):
    load_dataset("synthetic", num_samples=200, seed=4)
    (entry,) = entries(cache_dir)
    (entry / "meta.json").unlink()  # as if the writer died before it: not an entry, rebuilt next time
    (entry / ".x_train.bin.k1ll3d.tmp").write_bytes(b"x" * 1000)
    assert_same(load_dataset("synthetic", num_samples=200, seed=4), make_synthetic(200, 10_000, 4))
    assert sorted(p.name for p in entry.iterdir()) == sorted([*(f"{a}.bin" for a in ARRAYS), "meta.json"])


def test_no_home_folder_for_the_cache_means_decoding_in_memory(monkeypatch):
    monkeypatch.setenv("PARSGD_CACHE_DIR", "~no_such_user_parsgd/cache")  # expanduser cannot resolve it
    logs = []
    data = load_dataset("synthetic", num_samples=100, seed=5, log=logs.append)
    assert data.x_train.flags.writeable and "data cache skipped (no folder for it" in logs[0], logs
    monkeypatch.setenv("PARSGD_CACHE_DIR", "   ")  # blank: as if unset, never a folder named by spaces
    monkeypatch.setenv("XDG_CACHE_HOME", "/nonexistent-xdg-parsgd")
    assert cache.cache_dir() == Path("/nonexistent-xdg-parsgd/parsgd/decoded")


@pytest.mark.slow
def test_a_launch_maps_one_copy_in_the_server_and_every_worker(cache_dir, tmp_path):
    """`parsgd launch` on a cold cache: one entry, and while it trains every process maps its x_train.bin."""
    env = {**os.environ, "PARSGD_CACHE_DIR": str(cache_dir), "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "parsgd", "launch", "--workers", "2", "--dataset", "synthetic", "--num-samples",
            "4000", "--epochs", "3", "--hidden", "32,16", "--batch-size", "8", "--lr", "0.02",  # lr 0.1 diverges there
            "--out", str(tmp_path / "run")]
    launch = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: dict[int, set[int]] = {}
    output = []
    try:
        for line in launch.stdout:  # both workers have loaded their data once the server says "2 live"
            output.append(line)
            if "2 live" in line:
                break
        [entry] = entries(cache_dir)
        for pid in descendants(launch.pid):
            inodes = mapped_inodes(pid, entry / "x_train.bin")
            if inodes:
                seen[pid] = inodes
        output += launch.stdout.readlines()
        launch.wait(timeout=120)
    finally:
        launch.kill()
    text = "".join(output)
    assert launch.returncode == 0, text[-3000:]
    assert len(seen) == 3 and set.union(*seen.values()) == {os.stat(entry / "x_train.bin").st_ino}, seen
    assert "data cache" not in text and "Traceback" not in text


def descendants(pid: int) -> list[int]:
    found, frontier = [], [pid]
    while frontier:
        kids = []
        for parent in frontier:
            for task in Path(f"/proc/{parent}/task").glob("*"):
                try:
                    kids += [int(k) for k in (task / "children").read_text().split()]
                except OSError:
                    pass
        found += kids
        frontier = kids
    return found


def test_opening_a_60000_row_entry_is_cheap(cache_dir):
    """The open-time check (sizes + CRC-32 over the mapping) of the full synthetic set stays well under 0.2 s."""
    load_dataset("synthetic")
    [entry] = entries(cache_dir)
    key = json.loads((entry / "meta.json").read_text())["key"]
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        data, problem = cache.open_entry(entry, key)
        best = min(best, time.perf_counter() - t)
        assert problem is None and data.x_train.shape == (60_000, 784)
        del data
    assert best < 0.5, best  # 0.03-0.06 s measured on 2 busy cores; the bound leaves room for a slow CI disk
