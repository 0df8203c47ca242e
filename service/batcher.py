"""One model call for whatever requests are waiting: batching shared by every endpoint.

BentoML's own adaptive batching lives in its HTTP dispatcher, one queue per batchable API, and it
sheds load (503) when it predicts a batch will miss `max_latency_ms`. We want the opposite trade-off
for a digit model that answers a batch of 64 in a few milliseconds: every endpoint (JSON, upload,
canvas, batch) feeds one queue, requests queue instead of failing while the model is busy, and only
a queue past `max_queue` images is refused. Whatever arrived while the previous batch ran forms the
next one, so at one connection a request runs alone (no added wait) and under load batches grow by
themselves.

Models are swapped between batches (`install`): each batch reads its route's model once, so a batch
runs wholly on the old model or wholly on the new one, and every answer carries the model that
computed it. Two routes share the queue: "champion", and "challenger" for the canary's share; a
batch holds one route's jobs only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

log = logging.getLogger(__name__)


CHAMPION, CHALLENGER = "champion", "challenger"
Model = Callable[[np.ndarray], np.ndarray]


class Overloaded(RuntimeError):
    """More images are waiting than the service is configured to queue."""


@dataclass
class _Job:
    images: np.ndarray
    tag: str
    route: str
    future: asyncio.Future = field(repr=False)


class Answer(NamedTuple):
    """A job's rows of the model's output, and the model that computed them."""

    outputs: np.ndarray
    model: Model


@dataclass(frozen=True)
class Batch:
    """One model call, as `on_batch` hears of it: its input, output, each row's tag, the model
    and route that answered, and time."""

    images: np.ndarray
    outputs: np.ndarray
    tags: list[str]
    seconds: float
    model: Model
    route: str = CHAMPION


class MicroBatcher:
    """`await batcher(images)` → an `Answer`: the model's output for exactly those images, batched
    with others, and the model that gave it.

    The model runs on one dedicated thread, so model calls never overlap (TF parallelises inside a
    call) and the event loop keeps accepting requests meanwhile. `on_batch(Batch)` hears of every
    model call on that thread, after it: the metrics then cost one vectorised pass per batch, off
    the event loop, instead of one per request. A job's `tag` (its endpoint) labels its rows.
    """

    def __init__(
        self,
        model: Model,
        *,
        max_batch: int,
        max_queue: int,
        on_batch: Callable[[Batch], None] = lambda batch: None,
        after_batch: Callable[[Batch], None] = lambda batch: None,
    ) -> None:
        self.max_batch, self.max_queue, self.on_batch = max_batch, max_queue, on_batch
        # on the event loop, once the batch's callers have their answers (the shadow hooks here)
        self.after_batch = after_batch
        self.models: dict[str, Model | None] = {CHAMPION: model, CHALLENGER: None}
        self._busy_since: float | None = None
        self._pending: deque[_Job] = deque()
        self._queued = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="model")

    @property
    def queued(self) -> int:
        """Images waiting for the model (not counting the batch it is running)."""
        return self._queued

    def busy_for(self) -> float:
        """Seconds the model call now running has taken so far (0: idle): what tells a stuck
        model call from a busy worker."""
        since = self._busy_since
        return 0.0 if since is None else time.monotonic() - since

    def install(self, route: str, model: Model | None) -> Model | None:
        """Serve `route` with `model` from the next batch on; return the model it replaces.
        Call it on the event loop: batches read their model there, so none sees half a swap."""
        old, self.models[route] = self.models[route], model
        return old

    async def __call__(self, images: np.ndarray, tag: str = "", route: str = CHAMPION) -> Answer:
        if self._queued + len(images) > self.max_queue:
            raise Overloaded(
                f"{self._queued} images are already waiting (limit {self.max_queue}); retry shortly"
            )
        self._start()
        job = _Job(images, tag, route, asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self._queued += len(images)
        self._wake.set()
        return await job.future

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop())

    def _take(self) -> tuple[list[_Job], str]:
        """The first waiting job's route and that route's waiting jobs in arrival order, up to
        max_batch images (an oversized job goes alone); other routes' jobs keep their places."""
        route = self._pending[0].route
        jobs, size, others = [], 0, deque()
        while self._pending:
            job = self._pending[0]
            if job.route != route:
                others.append(self._pending.popleft())
                continue
            if jobs and size + len(job.images) > self.max_batch:
                break
            jobs.append(self._pending.popleft())
            size += len(job.images)
        self._pending.extendleft(reversed(others))
        self._queued -= size
        return jobs, route

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                jobs, route = self._take()
                # read once per batch: a swap (install) takes effect between two batches
                model = self.models[route] or self.models[CHAMPION]
                batch = (
                    np.concatenate([j.images for j in jobs]) if len(jobs) > 1 else jobs[0].images
                )
                tags = [j.tag for j in jobs for _ in range(len(j.images))]
                try:
                    done = await loop.run_in_executor(
                        self._executor, self._run, model, route, batch, tags
                    )
                except Exception as exc:  # the callers get the error; the loop keeps serving
                    for job in jobs:
                        if not job.future.done():
                            job.future.set_exception(exc)
                    continue
                start = 0
                for job in jobs:
                    end = start + len(job.images)
                    if not job.future.done():  # the client may have gone away
                        job.future.set_result(Answer(done.outputs[start:end], model))
                    start = end
                try:
                    self.after_batch(done)
                except Exception:
                    log.exception("after_batch failed; the batch's answers were returned")

    def _run(self, model: Model, route: str, batch: np.ndarray, tags: list[str]) -> Batch:
        started = time.perf_counter()
        self._busy_since = time.monotonic()
        try:
            out = model(batch)
        finally:
            self._busy_since = None
        done = Batch(batch, out, tags, time.perf_counter() - started, model, route)
        try:
            self.on_batch(done)
        except Exception:  # counting must not fail the predictions it counts
            log.exception("on_batch failed; the batch's answers are still returned")
        return done

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
