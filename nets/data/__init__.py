"""MNIST on disk, in three parts: the IDX reader (``idx``), what each file must match
(``checksums``), mirror downloads (``fetch``), and splits found or downloaded, checked and cut
into training and held-out rows (``mnist``). Pixel conversion is :mod:`nets.pixels`.

The names below are the public surface; ``from nets.data import load_mnist`` is the usual call.
"""

from nets.data.checksums import MNIST_CHECKSUMS, FileChecksum
from nets.data.fetch import DEFAULT_MIRRORS, MIRRORS_ENV, mnist_mirrors
from nets.data.idx import MAX_PAYLOAD_BYTES, MnistFormatError, read_idx
from nets.data.mnist import (
    DATA_DIR_ENV,
    MNIST_ERRORS,
    SPLIT_FILES,
    MnistArrays,
    MnistUnavailableError,
    Split,
    default_data_dir,
    load_mnist,
    training_and_held_out,
    user_cache_dir,
)

__all__ = ["DATA_DIR_ENV", "DEFAULT_MIRRORS", "MAX_PAYLOAD_BYTES", "MIRRORS_ENV", "MNIST_CHECKSUMS",
           "MNIST_ERRORS", "SPLIT_FILES", "FileChecksum", "MnistArrays", "MnistFormatError",
           "MnistUnavailableError", "Split", "default_data_dir", "load_mnist", "mnist_mirrors",
           "read_idx", "training_and_held_out", "user_cache_dir"]
