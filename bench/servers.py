"""Start a server on a free local port, wait until it says it is ready, and always stop it.

Each server runs in its own session; stopping it signals its process group and every descendant
(BentoML puts its workers in sessions of their own), so nothing is left listening after the run,
even after an error or Ctrl-C. The same process tree tells when a server has gone idle.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


class ServerError(RuntimeError):
    """The server exited or never became ready; the message carries the end of its log."""


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it; a race is possible but unlikely)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stats() -> dict[int, tuple[int, float]]:
    """pid → (parent pid, CPU seconds used) for every live process, from /proc/<pid>/stat."""
    tick = os.sysconf("SC_CLK_TCK")
    stats = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        if fields[0] == "Z":
            continue  # exited, waiting to be reaped: uses nothing, needs no signal
        # after "(comm)": state ppid pgrp session ... utime (12th) stime (13th)
        stats[int(stat.parent.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return stats


def tree(pid: int, stats: dict[int, tuple[int, float]] | None = None) -> set[int]:
    """pid and all its live descendants. BentoML starts its workers in sessions of their own, so
    the process group alone does not reach them."""
    stats = _stats() if stats is None else stats
    children: dict[int, list[int]] = {}
    for child, (parent, _) in stats.items():
        children.setdefault(parent, []).append(child)
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        if p in stats and p not in found:
            found.add(p)
            todo += children.get(p, [])
    return found


def tree_cpu_s(pid: int) -> float:
    """CPU seconds used so far by pid and its live descendants."""
    stats = _stats()
    return sum(stats[p][1] for p in tree(pid, stats))


def wait_idle(
    proc: subprocess.Popen[bytes], *, busy_cores: float = 0.1, timeout_s: float = 120.0
) -> float:
    """Block until the server's processes use less than busy_cores; returns the seconds waited.

    When wrk stops, requests it had in flight stay queued in the server, which keeps working on
    them; without this the next setting would share the CPU with the last one's backlog.
    """
    started = last_t = time.monotonic()
    last_cpu = tree_cpu_s(proc.pid)
    while time.monotonic() - started < timeout_s:
        time.sleep(0.5)
        now, cpu = time.monotonic(), tree_cpu_s(proc.pid)
        if (cpu - last_cpu) / (now - last_t) < busy_cores:
            break
        last_t, last_cpu = now, cpu
    return time.monotonic() - started


def _signal(pids: set[int], sig: signal.Signals) -> None:
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, sig)


def stop(proc: subprocess.Popen[bytes], grace_s: float = 20.0) -> None:
    """SIGTERM the server (its group and every descendant), SIGKILL what is left after grace_s."""
    pids = tree(proc.pid)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)  # start_new_session=True: pid is the group id
    _signal(pids - {proc.pid}, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)
    alive = pids & set(_stats())
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = pids & set(_stats())
    if alive or proc.poll() is None:
        _signal(alive | {proc.pid}, signal.SIGKILL)
        proc.wait(timeout=10)


@contextmanager
def running(
    name: str,
    argv: list[str],
    ready_url: str,
    *,
    cwd: Path,
    log: Path,
    env: dict[str, str] | None = None,
    timeout_s: float = 120.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run argv until the block ends; yields once GET ready_url answers 200."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        started = time.monotonic()
        while not _ready(ready_url):
            if proc.poll() is not None:
                raise ServerError(f"{name} exited with {proc.returncode}:\n{log_tail(log)}")
            if time.monotonic() - started > timeout_s:
                raise ServerError(f"{name} not ready after {timeout_s:.0f} s:\n{log_tail(log)}")
            time.sleep(0.5)
        print(f"    {name} ready after {time.monotonic() - started:.1f} s", flush=True)
        yield proc
    finally:
        stop(proc)
