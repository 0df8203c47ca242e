"""Follow the champion: a background thread that notices a newly packaged model and swaps it in.

Why poll the BentoML model store rather than take an admin call: `make package` (and `make
rollback`, `make promote`) already moves `<name>:latest` and the challenger pointer with atomic
renames, every worker of every replica on the machine sees the same files, and nothing needs a
credential or a route to each worker. A poll is one small file read per role every
DIGIT_RELOAD_INTERVAL_S (2 s), never on the request path and never a call to MLflow.

A changed tag is loaded, warmed up and checked here, beside the model that serves
(service/models.py), then handed to `install` on the event loop, which puts it in the batcher
between two batches. A model that fails is not swapped in: the old one keeps serving, the log
says why, the failure is counted, and that tag is not retried until the store names another.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections.abc import Awaitable, Callable

from service import metrics
from service.models import Loaded, LoadFailed

log = logging.getLogger(__name__)

Tags = dict[str, str | None]  # role → the Bento tag it should serve (None: nothing)


class Watcher:
    def __init__(
        self,
        *,
        wanted: Callable[[], Tags],
        serving: Callable[[], Tags],
        load: Callable[[str], Loaded],
        install: Callable[[str, Loaded | None], Awaitable[None]],
        loop: asyncio.AbstractEventLoop,
        interval_s: float,
    ) -> None:
        self.wanted, self.serving, self.load, self.install = wanted, serving, load, install
        self.loop, self.interval_s = loop, interval_s
        self.refused: Tags = {}  # role → the tag that failed, not retried until the store moves
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # the watcher must outlive any one bad round
                log.exception("model watcher: this round failed; retrying in %ss", self.interval_s)

    def check(self) -> dict[str, str]:
        """One round: swap in what the store names and this worker does not serve yet; return
        each changed role's outcome."""
        try:
            wanted = self.wanted()
        except Exception as exc:  # e.g. the store mid-rename, or the model deleted: keep serving
            log.warning("model watcher: cannot read the model store (%s); still serving", exc)
            return {}
        now, outcomes = self.serving(), {}
        for role, tag in wanted.items():
            if tag == now.get(role) or (tag is not None and tag == self.refused.get(role)):
                continue
            outcomes[role] = self._swap(role, tag, now.get(role))
        return outcomes

    def _swap(self, role: str, tag: str | None, old: str | None) -> str:
        new, started = None, time.perf_counter()
        if tag is not None:
            try:
                new = self.load(tag)
            except LoadFailed as exc:
                self.refused[role] = tag
                log.error("model watcher: %s not swapped in, still serving %s: %s", tag, old, exc)
                metrics.reload(role, f"{exc.stage}_failed")
                return f"{exc.stage}_failed"
        loaded = time.perf_counter()
        asyncio.run_coroutine_threadsafe(self.install(role, new), self.loop).result()
        self.refused.pop(role, None)
        metrics.reload(role, "swapped")
        # Release the old model: the service froze its start-up objects out of the collector
        # (gc.freeze), so the old graph's cycles are only found after an unfreeze.
        del new
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        log.warning(
            "model watcher: %s now serves %s (was %s; loaded and checked in %.2f s, old one "
            "released in %.2f s)",
            role,
            tag,
            old,
            loaded - started,
            time.perf_counter() - loaded,
        )
        return "swapped"
