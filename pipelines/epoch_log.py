"""Per-epoch metrics that survive a tracking-server outage: an hour of training must not die,
stall or lose a metric because the server restarted.

Keras' epoch end only queues the metrics; a background thread ships them with `log_batch` (whose
HTTP calls MLflow already retries) and keeps whatever fails for the next try, so a failing server
never blocks a training step. `close()` at the end waits, boundedly, until every metric is in.
A metric keeps its original timestamp and step, so resending one that did arrive adds nothing
(MLflow stores a metric once per key, value, timestamp and step).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import keras
import requests
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

T = TypeVar("T")
WAIT_ENV = "DIGIT_TRACKING_WAIT_S"  # how long the end of training waits for the tracking server
RETRY_S = 5.0  # between two shipping attempts while the server is away


def wait_s() -> float:
    """`$DIGIT_TRACKING_WAIT_S`, default 15 minutes: an env setting, not a param, so changing it
    never invalidates a trained model in dvc.lock."""
    raw = os.environ.get(WAIT_ENV, "900")
    try:
        return max(float(raw), 0.0)
    except ValueError:
        raise SystemExit(f"{WAIT_ENV}={raw!r}: give a number of seconds") from None


def transient(err: BaseException) -> bool:
    """An outage (no connection, a 5xx) is worth retrying; a 4xx would only be refused again."""
    if isinstance(err, MlflowException):
        return err.get_http_status_code() >= 500
    return isinstance(err, (OSError, requests.RequestException))


class TrackingUnavailable(RuntimeError):
    """The server stayed away longer than `DIGIT_TRACKING_WAIT_S`."""


class EpochMetrics(keras.callbacks.Callback):
    """What `mlflow.keras.MlflowCallback` logs (optimizer params and the model summary at the
    start, metrics per epoch), with the metrics buffered and shipped in the background. Not a
    subclass: MLflow's callback swallows every exception its methods raise, `close()`'s too."""

    def __init__(self, run_id: str, client: MlflowClient | None = None) -> None:
        super().__init__()
        self.run_id, self.client = run_id, client or MlflowClient()
        self.pending: list[Metric] = []
        self.lock, self.wake, self.closing = threading.Lock(), threading.Event(), False
        self.away = False  # the last attempt failed
        self.thread = threading.Thread(target=self._ship, name="epoch-metrics", daemon=True)
        self.thread.start()

    def on_train_begin(self, logs: dict | None = None) -> None:
        config = self.model.optimizer.get_config()
        params = [Param(f"optimizer_{k}", str(v)[:6000]) for k, v in config.items()]
        lines: list[str] = []
        self.model.summary(print_fn=lambda line, *a, **k: lines.append(line))
        patiently(lambda: self.client.log_batch(self.run_id, params=params), "optimizer params")
        patiently(
            lambda: self.client.log_text(self.run_id, "\n".join(lines), "model_summary.txt"),
            "model summary",
        )

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        stamp = int(time.time() * 1000)
        with self.lock:
            self.pending += [Metric(k, float(v), stamp, epoch) for k, v in (logs or {}).items()]
        self.wake.set()

    def _ship(self) -> None:
        while True:
            self.wake.wait(RETRY_S)
            self.wake.clear()
            with self.lock:
                batch = list(self.pending)
            if batch:
                try:
                    self.client.log_batch(self.run_id, metrics=batch)
                except Exception as err:
                    if not transient(err):  # refused, not unreachable: resending repeats it
                        say(f"MLflow refused {len(batch)} metrics: {err}")
                        with self.lock:
                            del self.pending[: len(batch)]
                        continue
                    if not self.away:  # keep them, try again
                        say(
                            f"tracking server unreachable ({type(err).__name__}); "
                            f"buffering metrics, training goes on"
                        )
                    self.away = True
                    continue
                with self.lock:
                    del self.pending[: len(batch)]
                if self.away:
                    say(f"tracking server back; {len(batch)} buffered metrics sent")
                self.away = False
            with self.lock:
                if self.closing and not self.pending:
                    return

    def close(self, wait: float | None = None) -> None:
        """Return once every metric is in MLflow; raise TrackingUnavailable after `wait` s."""
        self.closing = True
        self.wake.set()
        self.thread.join(wait_s() if wait is None else wait)
        if self.thread.is_alive() or self.pending:
            raise TrackingUnavailable(
                f"the tracking server stayed unreachable for {WAIT_ENV} seconds; "
                f"{len(self.pending)} metrics unsent (they are in the training history). Rerun "
                f"`dvc repro` once the server is back: training resumes after its last epoch"
            )


def patiently(call: Callable[[], T], what: str, wait: float | None = None) -> T:
    """`call()` until it succeeds or `wait` seconds (DIGIT_TRACKING_WAIT_S) have passed."""
    deadline = time.monotonic() + (wait_s() if wait is None else wait)
    while True:
        try:
            return call()
        except Exception as err:
            if not transient(err):
                raise
            if time.monotonic() > deadline:
                raise TrackingUnavailable(
                    f"{what}: the tracking server stayed away ({err})"
                ) from err
            say(f"{what}: tracking server unreachable ({type(err).__name__}); retrying")
            time.sleep(RETRY_S)


def say(line: str) -> None:
    print(f"train: {line}", file=sys.stderr, flush=True)


__all__: list[Any] = ["EpochMetrics", "TrackingUnavailable", "patiently", "wait_s"]
