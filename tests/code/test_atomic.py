"""Atomic folder writes: the old folder survives a failure and is replaced whole on success."""

from __future__ import annotations

import contextlib
import errno
import os

import pytest

from pipelines import atomic
from pipelines.atomic import atomic_dir, replace_dir


def test_atomic_dir_replaces_the_whole_folder(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    with atomic_dir(target) as tmp:
        assert tmp.parent == tmp_path and not any(tmp.iterdir())
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp or old folder left


def test_atomic_dir_keeps_the_old_folder_when_the_block_fails(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "model.bin").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "model.bin").write_text("half")
        raise RuntimeError("export crashed")
    assert (target / "model.bin").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_dir_creates_a_missing_target(tmp_path):
    target = tmp_path / "a" / "b"
    with atomic_dir(target) as tmp:
        (tmp / "f").write_text("x")
    assert (target / "f").read_text() == "x"


def _failing_after(n: int):
    """os.replace that works `n` times, then fails: a disk that goes away half-way."""
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) > n:
            raise OSError(errno.EIO, "injected failure")
        real(src, dst)

    return replace


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_a_failing_swap_never_loses_both_copies(tmp_path, monkeypatch, exchange):
    """The old folder moved aside, then the new one cannot be moved in nor the old one back:
    both copies must still be on disk (the old code deleted both in its `finally`)."""
    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    monkeypatch.setattr(atomic.os, "replace", _failing_after(1))
    target = tmp_path / "out"
    target.mkdir()
    (target / "model.bin").write_text("old")
    with contextlib.suppress(OSError), atomic_dir(target) as tmp:
        (tmp / "model.bin").write_text("new")
    kept = sorted(p.read_text() for p in tmp_path.rglob("model.bin"))
    if exchange:  # one atomic step: the new copy is in place, the old one gone
        assert (target / "model.bin").read_text() == "new" and kept == ["new"]
    else:  # the second rename and the undo failed: both copies stay, beside each other
        assert kept == ["new", "old"]


def test_replace_dir_swaps_in_one_step_on_linux(tmp_path, monkeypatch):
    """With the exchange, `target` is never missing: no rename moves it aside."""
    if atomic._LIBC is None or getattr(atomic._LIBC, "renameat2", None) is None:
        pytest.skip("no renameat2 here")
    monkeypatch.setattr(atomic.os, "replace", _failing_after(0))  # any rename aside would fail
    target, new = tmp_path / "out", tmp_path / "new"
    target.mkdir()
    new.mkdir()
    (target / "f").write_text("old")
    (new / "f").write_text("new")
    replace_dir(new, target)
    assert (target / "f").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
