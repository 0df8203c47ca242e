"""One model call for whatever requests are waiting: batching shared by every endpoint.

BentoML's own adaptive batching lives in its HTTP dispatcher, one queue per batchable API, and it
sheds load (503) when it predicts a batch will miss `max_latency_ms`. We want the opposite trade-off
for a digit model that answers a batch of 64 in a few milliseconds: every endpoint (JSON, upload,
canvas, batch) feeds one queue, requests queue instead of failing while the model is busy, and only
a queue past `max_queue` images is refused. Whatever arrived while the previous batch ran forms the
next one, so at one connection a request runs alone (no added wait) and under load batches grow by
themselves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)


class Overloaded(RuntimeError):
    """More images are waiting than the service is configured to queue."""


@dataclass
class _Job:
    images: np.ndarray
    tag: str
    future: asyncio.Future = field(repr=False)


@dataclass(frozen=True)
class Batch:
    """One model call, as `on_batch` hears of it: its input, output, each row's tag, and time."""

    images: np.ndarray
    outputs: np.ndarray
    tags: list[str]
    seconds: float


class MicroBatcher:
    """`await batcher(images)` → the model's output for exactly those images, batched with others.

    `infer` runs on one dedicated thread, so model calls never overlap (TF parallelises inside a
    call) and the event loop keeps accepting requests meanwhile. `on_batch(Batch)` hears of every
    model call on that thread, after it: the metrics then cost one vectorised pass per batch, off
    the event loop, instead of one per request. A job's `tag` (its endpoint) labels its rows.
    """

    def __init__(
        self,
        infer: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch: int,
        max_queue: int,
        on_batch: Callable[[Batch], None] = lambda batch: None,
    ) -> None:
        self.infer, self.max_batch, self.max_queue, self.on_batch = (
            infer,
            max_batch,
            max_queue,
            on_batch,
        )
        self._pending: deque[_Job] = deque()
        self._queued = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="model")

    @property
    def queued(self) -> int:
        """Images waiting for the model (not counting the batch it is running)."""
        return self._queued

    async def __call__(self, images: np.ndarray, tag: str = "") -> np.ndarray:
        if self._queued + len(images) > self.max_queue:
            raise Overloaded(
                f"{self._queued} images are already waiting (limit {self.max_queue}); retry shortly"
            )
        self._start()
        job = _Job(images, tag, asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self._queued += len(images)
        self._wake.set()
        return await job.future

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop())

    def _take(self) -> list[_Job]:
        """Waiting jobs in arrival order up to max_batch images (an oversized job goes alone)."""
        jobs, size = [], 0
        while self._pending and (not jobs or size + len(self._pending[0].images) <= self.max_batch):
            job = self._pending.popleft()
            jobs.append(job)
            size += len(job.images)
        self._queued -= size
        return jobs

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                jobs = self._take()
                batch = (
                    np.concatenate([j.images for j in jobs]) if len(jobs) > 1 else jobs[0].images
                )
                tags = [j.tag for j in jobs for _ in range(len(j.images))]
                try:
                    out = await loop.run_in_executor(self._executor, self._run, batch, tags)
                except Exception as exc:  # the callers get the error; the loop keeps serving
                    for job in jobs:
                        if not job.future.done():
                            job.future.set_exception(exc)
                    continue
                start = 0
                for job in jobs:
                    end = start + len(job.images)
                    if not job.future.done():  # the client may have gone away
                        job.future.set_result(out[start:end])
                    start = end

    def _run(self, batch: np.ndarray, tags: list[str]) -> np.ndarray:
        started = time.perf_counter()
        out = self.infer(batch)
        try:
            self.on_batch(Batch(batch, out, tags, time.perf_counter() - started))
        except Exception:  # counting must not fail the predictions it counts
            log.exception("on_batch failed; the batch's answers are still returned")
        return out

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
