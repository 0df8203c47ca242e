"""Picture decoding in child processes: a hostile file costs bounded time, memory and concurrency.

A decoder cannot be stopped from inside: a progressive JPEG of thousands of tiny scans, or an RLE
BMP that Pillow decodes in pure Python holding the GIL, runs for seconds to minutes whatever the
request timeout says, and a small PNG can inflate to hundreds of MB. So each worker decodes in
`slots` long-lived child processes (forked from a forkserver that imported only Pillow and numpy,
never TensorFlow), each with an address-space limit and a lower CPU priority than the worker, and
kills and replaces a child that has burnt more than `timeout_s` of CPU on one picture (a starved
one, past WALL_FACTOR × that of waiting, gives `Overloaded`), or that hit its memory limit. `Slots`
caps how many requests may wait for one; past that the caller gets `Overloaded` (a 503 with
Retry-After), not a longer queue.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import resource
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from multiprocessing.connection import Connection
from typing import Any

from service.batcher import Overloaded
from service.refusals import Rejected

PRELOAD = ["service.inputs.pictures", "service.inputs.data_urls", "service.sandbox"]
NICE = 10  # decoding yields the CPU to the workers' event loops and the model
# A decode is refused past DIGIT_DECODE_TIMEOUT_S of its own CPU time, and given up (a 503) past
# this many times that of waiting, when busy workers leave the niced decoder too little CPU.
WALL_FACTOR = 4
MIN_WAIT_S = 0.01
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_DONE, _REFUSED, _SPENT = "done", "refused", "spent"  # what a child answers, with a value


class Slots:
    """At most `size` holders at once and `max_waiting` more in line; past that, Overloaded."""

    def __init__(self, size: int, max_waiting: int, what: str) -> None:
        self.size, self.max_waiting, self.what = size, max_waiting, what
        self._free = asyncio.Semaphore(size)
        self.waiting = 0

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()

    async def acquire(self) -> None:
        if self._free.locked() and self.waiting >= self.max_waiting:
            raise Overloaded(
                f"{self.size} {self.what} busy and {self.waiting} more waiting in this worker"
            )
        self.waiting += 1
        try:
            await self._free.acquire()
        finally:
            self.waiting -= 1

    def release(self) -> None:
        self._free.release()


class Sandbox:
    """`await sandbox(fn, *args)`: fn(*args) in a child process, within the bounds above.

    fn and args must pickle (module-level functions, bytes, dataclasses); `Rejected` comes back
    as itself, a killed or crashed child as Rejected("too_costly"), a starved one as Overloaded.
    """

    def __init__(
        self,
        slots: int,
        timeout_s: float,
        memory_bytes: int,
        max_waiting: int,
        wall_s: float | None = None,
    ) -> None:
        self.timeout_s, self.memory_bytes = timeout_s, memory_bytes
        self.wall_s = WALL_FACTOR * timeout_s if wall_s is None else wall_s
        self.slots = Slots(slots, max_waiting, "picture decoders")
        self._children = [_Child(memory_bytes) for _ in range(slots)]

    async def __call__(self, fn: Callable[..., Any], *args: Any) -> Any:
        await self.slots.acquire()
        child = self._children.pop()
        loop = asyncio.get_running_loop()
        running = loop.run_in_executor(None, child.run, fn, args, self.timeout_s, self.wall_s)

        def done(future: asyncio.Future) -> None:
            # only once the thread is done with the child: a request cancelled meanwhile (a
            # timeout, a client gone) must not hand a busy child to the next one
            self._children.append(child)
            self.slots.release()
            if not future.cancelled():
                future.exception()  # retrieved: a cancelled caller no longer awaits it

        running.add_done_callback(done)
        return await asyncio.shield(running)

    def close(self) -> None:
        for child in self._children:
            child.stop()


class _Child:
    """One decoding process, started on first use and again after it is killed."""

    def __init__(self, memory_bytes: int) -> None:
        self.memory_bytes = memory_bytes
        self.process: multiprocessing.process.BaseProcess | None = None
        self.conn: Connection | None = None

    def run(self, fn: Callable[..., Any], args: tuple, timeout_s: float, wall_s: float) -> Any:
        if self.process is None or not self.process.is_alive():
            self._start()
        assert self.conn is not None and self.process is not None
        self.conn.send((fn, args))
        self._wait(self.process.pid, timeout_s, wall_s)
        try:
            status, value = self.conn.recv()
        except (EOFError, OSError):  # the child died: its memory limit, most likely
            self.stop()
            raise Rejected(
                "too_costly",
                f"decoding this picture needed more than {self.memory_bytes // 2**20:,} MiB "
                "(DIGIT_DECODE_MEMORY_MB); send a smaller picture",
            ) from None
        if status == _DONE:
            return value
        if status == _SPENT:  # a heap that hit its limit may stay fragmented: start afresh
            self.stop()
        raise value

    def _wait(self, pid: int | None, timeout_s: float, wall_s: float) -> None:
        """Wait until the child answers; past `timeout_s` of its CPU time raise Rejected, past
        `wall_s` of waiting Overloaded (the child is killed first in both cases).

        The cost of a picture is the CPU its decoding burns: counted in wall time, a legitimate
        picture was refused whenever the decoder (niced) waited behind busy workers.
        """
        assert self.conn is not None
        started, cpu_before = time.monotonic(), _cpu_seconds(pid)
        while True:
            spent = _cpu_seconds(pid) - cpu_before
            waited = time.monotonic() - started
            if spent >= timeout_s:
                self.stop()
                raise Rejected(
                    "too_costly",
                    f"decoding this picture took more than {timeout_s:g} s of CPU "
                    "(DIGIT_DECODE_TIMEOUT_S); send a smaller or simpler file (a baseline JPEG "
                    "or a PNG of a few hundred pixels a side)",
                )
            if waited >= wall_s:
                self.stop()
                raise Overloaded(
                    f"this worker's picture decoder got too little CPU to finish within "
                    f"{wall_s:g} s (the server is busy); retry shortly"
                )
            # CPU time never runs ahead of the clock (one thread), so waiting for the CPU budget
            # left wakes no earlier than needed: one wait when the child has a core to itself
            if self.conn.poll(min(max(timeout_s - spent, MIN_WAIT_S), wall_s - waited)):
                return

    def _start(self) -> None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        self.conn, theirs = context.Pipe()
        self.process = context.Process(
            target=_serve, args=(theirs, self.memory_bytes), daemon=True, name="digit-decoder"
        )
        self.process.start()
        theirs.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.join(5)
        if self.conn is not None:
            self.conn.close()
        self.process = self.conn = None


def _serve(conn: Connection, memory_bytes: int) -> None:
    """The child's loop: (fn, args) in, (True, result) or (False, Rejected) out."""
    os.nice(NICE)
    limit = _address_space() + memory_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    while True:
        try:
            fn, args = conn.recv()
        except (EOFError, OSError):  # the worker is gone
            return
        try:
            conn.send((_DONE, fn(*args)))
        except Rejected as exc:
            conn.send((_REFUSED, exc))
        except MemoryError:
            conn.send((_SPENT, Rejected("too_costly", _MEMORY.format(memory_bytes // 2**20))))
        except Exception as exc:  # a decoder bug is still the file's doing: refuse, don't 500
            message = f"cannot decode the picture ({type(exc).__name__}); send PNG or JPEG"
            conn.send((_REFUSED, Rejected("not_an_image", message)))


_MEMORY = "decoding this picture needs over {:,} MiB (DIGIT_DECODE_MEMORY_MB); send a smaller one"


def _cpu_seconds(pid: int | None) -> float:
    """User and system CPU time of process `pid` (all its threads); 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()  # the name may hold spaces
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _address_space() -> int:
    """This process's virtual size now: the limit is set on top of what is already mapped."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
