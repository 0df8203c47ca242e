"""The challenger in the shadow: it answers a share of what the champion answered, off the reply
path, and only the agreement is kept (service/metrics.py).

It runs after the champion's callers have their answers, on a thread of its own, so it never
changes a reply and never delays one except by the CPU it uses. Its cost is bounded: at most
`backlog` images wait for it; past that, images are skipped and counted rather than queued, so a
slow challenger cannot grow memory or latency without limit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from service import metrics
from service.batcher import CHAMPION, Batch
from service.models import Loaded

log = logging.getLogger(__name__)


class Shadow:
    def __init__(self, share: float, backlog: int, challenger: Callable[[], Loaded | None]) -> None:
        self.share, self.backlog, self.challenger = share, backlog, challenger
        self._waiting = 0
        self._lock = threading.Lock()
        self._rng = np.random.default_rng()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="shadow")

    def __call__(self, batch: Batch) -> None:
        """The batcher's after_batch hook (on the event loop): queue this batch's share."""
        challenger = self.challenger()
        if self.share <= 0 or batch.route != CHAMPION or challenger in (None, batch.model):
            return
        rows = np.flatnonzero(self._rng.random(len(batch.images)) < self.share)
        if not len(rows):
            return
        with self._lock:
            if self._waiting + len(rows) > self.backlog:
                metrics.shadow_skipped(len(rows))
                return
            self._waiting += len(rows)
        versions = (batch.model.version, challenger.version)
        self._executor.submit(
            self._run, challenger, batch.images[rows], batch.outputs[rows], versions
        )

    def _run(self, challenger: Loaded, images, champion, versions: tuple[str, str]) -> None:
        try:
            started = time.perf_counter()
            theirs = challenger(images)
            metrics.observe_shadow(champion, theirs, versions, time.perf_counter() - started)
        except Exception:
            log.exception("shadow: the challenger failed; replies are unaffected")
        finally:
            with self._lock:
                self._waiting -= len(images)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
