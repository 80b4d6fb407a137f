"""Datasets: IDX files, MNIST (download, SHA256 check, cache), Fashion-MNIST, synthetic; epoch order.

    python -c "from parsgd.data import *; d = load_dataset(log=print); print(d.x_train.shape, d.fingerprint())"

One module per role, each importing only the ones above it in this list:
    dataset    DataError, Dataset (+ fingerprint), epoch_order, default_data_dir
    cache      the decoded-data cache: one checksummed copy per machine, mapped read-only (cached)
    idx        read_idx / write_idx, finding and reading a folder of MNIST-format files
    mnist      mirrors, pinned SHA256 table, download_mnist
    synthetic  the teacher-network generator, make_synthetic
    load       load_dataset: what `auto` picks; Fashion-MNIST from the Debian package folder
The settings a test may patch (mnist.MNIST_MIRRORS, mnist.MNIST_FILES, load.FASHION_SYSTEM_DIRS, ...)
are read from their own module at call time and are not re-exported here, so patching parsgd.data
instead fails loudly (AttributeError) rather than silently changing nothing.
"""
from parsgd.data.dataset import DataError, Dataset, default_data_dir, epoch_order
from parsgd.data.idx import SET_FILES, read_idx, write_idx
from parsgd.data.load import load_dataset
from parsgd.data.mnist import download_mnist
from parsgd.data.synthetic import SYNTHETIC_TEST, SYNTHETIC_TRAIN, make_synthetic

__all__ = ["DataError", "Dataset", "default_data_dir", "epoch_order", "SET_FILES", "read_idx", "write_idx",
           "load_dataset", "download_mnist", "SYNTHETIC_TEST", "SYNTHETIC_TRAIN", "make_synthetic"]
