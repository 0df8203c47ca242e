"""Atomic writes of files and folders: a stage that dies half-way leaves the old outputs intact."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_path(target: Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temp path beside `target`; rename it over `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=suffix or "".join(target.suffixes), dir=target.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.chmod(0o666 & ~_umask())  # mkstemp makes 0600; give the file ordinary permissions
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


class BothKept(OSError):
    """A folder swap failed half-way and could not be undone: both copies are still on disk."""


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield an empty temp folder beside `target`; put it in `target`'s place only on success.

    A failure inside the block leaves `target` untouched; the swap itself is `replace_dir`.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; give the folder ordinary permissions
    try:
        yield tmp
        replace_dir(tmp, target)
    except BothKept:
        raise  # neither copy may be deleted now
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(new: Path, target: Path) -> None:
    """Move folder `new` to `target`, so that at no point are both the old and the new copy lost.

    On Linux the two are swapped in one atomic step (renameat2 RENAME_EXCHANGE): `target` always
    holds one complete copy, and the old one is deleted only after the swap. Elsewhere, or on a file
    system without the exchange, the old folder is renamed aside first and put back if the second
    rename fails; if even that fails, both copies are kept and the error says where they are.
    """
    new, target = Path(new), Path(target)
    if not (target.exists() or target.is_symlink()):
        os.replace(new, target)  # a rename onto nothing: atomic already
        return
    if _exchange(new, target):
        _remove(new)  # `new` now holds the old copy
        return
    old = target.parent / f".{target.name}.{os.getpid()}.old"
    _remove(old)
    os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        try:
            os.replace(old, target)  # put the previous one back
        except BaseException as err:
            raise BothKept(
                f"could not put {new} at {target}, nor the previous copy back: both are kept, the "
                f"previous one at {old}"
            ) from err
        raise
    _remove(old)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically where the OS can (Linux renameat2); False where it cannot."""
    renameat2 = getattr(_LIBC, "renameat2", None) if _LIBC is not None else None
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    errno_ = ctypes.get_errno()
    if errno_ in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # no exchange on this file system
        return False
    raise OSError(errno_, os.strerror(errno_), str(b))


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - no C library to ask (not Linux/macOS)
    _LIBC = None


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def write_json(target: Path, obj: Any) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_text(target: Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def save_npz(target: Path, **arrays: np.ndarray) -> None:
    with atomic_path(target, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)
