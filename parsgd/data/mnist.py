"""Downloading MNIST: the mirrors, the pinned SHA256 of each file, and an atomic write into the cache.

    python -c "from parsgd.data.mnist import download_mnist; print(download_mnist('/tmp/mnist', log=print))"

MNIST is LeCun, Cortes and Burges' database (http://yann.lecun.com/exdb/mnist/). load_dataset reads
MNIST_MIRRORS, MNIST_FILES and the timeouts from this module when it is called, so a test patches them
here (parsgd.data does not re-export them).
"""
from __future__ import annotations

import hashlib
import http.client
import urllib.error
import urllib.request
from pathlib import Path

from parsgd.data.dataset import DataError
from parsgd.files import WriteError, write_file

# torchvision's mirror, then the CVDF mirror that TensorFlow uses, then the original site
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
# SHA256 of the gzipped files, as pinned in tensorflow/datasets (url_checksums/mnist.txt).
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
DOWNLOAD_TIMEOUT = 30.0           # s per request
DOWNLOAD_TIMEOUT_AUTO = 10.0      # s per request when `auto` merely tries a download
MAX_DOWNLOAD_BYTES = 64 << 20     # the largest MNIST file is 9.9 MB


def offline_fix(folder: Path) -> str:
    """The end of the message for "MNIST cannot be downloaded": the other ways to get data."""
    return (f"copy the 4 MNIST .gz files into {folder}, or use --dataset fashion-mnist "
            "(apt-get install dataset-fashion-mnist), or --dataset synthetic")


def _write_atomic(target: Path, data: bytes) -> None:
    """Write to a temp file beside `target`, then rename (parsgd.files.write_file): readers never see a
    partial file. Raises DataError `cannot write PATH: REASON; ...` (so `auto` can fall back)."""
    try:
        write_file(target, data, fix="free disk space or pass a writable --data-dir")
    except WriteError as exc:
        raise DataError(str(exc)) from None


def download_mnist(dest_dir, mirrors=None, timeout=DOWNLOAD_TIMEOUT, log=None, files=None) -> Path:
    """Fetches each of `files` (file name -> SHA256 hex digest; None means MNIST_FILES) into `dest_dir`
    and returns dest_dir as a Path.

    `mirrors` (base URLs ending in "/"; None means MNIST_MIRRORS) are tried in order; `timeout` is in
    seconds per request; a response over MAX_DOWNLOAD_BYTES bytes is refused. A file already in dest_dir
    with the right SHA256 is not fetched again; a fetched file is written (atomically, replacing a stale
    one) only once its SHA256 matches. A mirror whose host is unreachable is skipped for the remaining
    files, so an offline machine fails after one attempt per mirror. `log(line)`, if given, is called
    once per downloaded file.

    Raises DataError if dest_dir cannot be created or written, if no mirror is reachable ("seems
    offline"), or if no mirror has a good copy of a file (HTTP errors, wrong SHA256); files already
    verified stay in dest_dir.
    """
    mirrors = MNIST_MIRRORS if mirrors is None else mirrors
    files = MNIST_FILES if files is None else files
    dest = Path(dest_dir)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{dest}: cannot create it ({exc.strerror or exc}); pass a writable --data-dir") from None
    unreachable: dict[str, str] = {}  # mirror -> why
    for name, sha256 in files.items():
        target = dest / name
        if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == sha256:
            continue
        problems = []
        for mirror in (m for m in mirrors if m not in unreachable):
            url = mirror + name
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    data = response.read(MAX_DOWNLOAD_BYTES + 1)
            except urllib.error.HTTPError as exc:
                exc.close()
                problems.append(f"{url}: HTTP {exc.code}")
                continue
            except (OSError, http.client.HTTPException) as exc:  # DNS, refused, timeout, TLS, reset
                unreachable[mirror] = f"{url}: {getattr(exc, 'reason', None) or exc}"
                continue
            if len(data) > MAX_DOWNLOAD_BYTES or hashlib.sha256(data).hexdigest() != sha256:
                problems.append(f"{url}: wrong SHA256")
                continue
            _write_atomic(target, data)
            if log:
                log(f"downloaded {url} ({len(data)} bytes, SHA256 ok)")
            break
        else:
            if not problems:
                first = next(iter(unreachable.values()), "no mirrors given")
                raise DataError(f"cannot reach any MNIST mirror ({first}); this machine seems offline: "
                                f"{offline_fix(dest)}")
            raise DataError(f"no good copy of {name} ({'; '.join(problems + list(unreachable.values()))}): "
                            f"{offline_fix(dest)}")
    return dest
