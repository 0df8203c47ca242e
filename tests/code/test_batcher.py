"""The shared micro-batcher: one model call for whatever is waiting, answers routed back exactly."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from service.batcher import CHALLENGER, MicroBatcher, Overloaded


class SlowModel:
    """Returns each image's first pixel as its 'probabilities'; records the batch sizes it saw."""

    def __init__(self, delay: float = 0.05, fail_on: int | None = None) -> None:
        self.calls: list[int] = []
        self.delay, self.fail_on = delay, fail_on
        self.release = threading.Event()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(len(batch))
        self.release.wait(self.delay)
        if self.fail_on is not None and batch[0, 0, 0] == self.fail_on:
            raise RuntimeError("model failed")
        return batch[:, :1, 0].astype(float)


def images(*firsts: int) -> np.ndarray:
    x = np.zeros((len(firsts), 28, 28), np.uint8)
    x[:, 0, 0] = firsts
    return x


def test_waiting_requests_share_one_model_call_and_get_their_own_answers():
    model, observed = SlowModel(), []

    async def main():
        b = MicroBatcher(model, max_batch=64, max_queue=100, on_batch=observed.append)
        first = asyncio.create_task(b(images(1), "one"))
        await asyncio.sleep(0.01)  # the model is now busy with the first request
        rest = await asyncio.gather(*(b(images(k, k + 100), f"e{k}") for k in range(2, 12)))
        b.close()
        assert all(answer.model is model for answer in rest)
        return (await first).outputs, [answer.outputs for answer in rest]

    first, rest = asyncio.run(main())
    assert first.tolist() == [[1.0]]
    for k, out in zip(range(2, 12), rest, strict=True):
        assert out.tolist() == [[k], [k + 100]]  # each caller gets exactly its own rows
    assert model.calls == [1, 20]  # the ten that waited went in one call
    # on_batch hears of each call: its rows in order, their outputs, each row's tag, a time
    assert [len(b.images) for b in observed] == [1, 20]
    assert observed[1].images[:, 0, 0].tolist() == [v for k in range(2, 12) for v in (k, k + 100)]
    assert observed[1].outputs[:, 0].tolist() == observed[1].images[:, 0, 0].tolist()
    assert observed[0].tags == ["one"]
    assert observed[1].tags == [f"e{k}" for k in range(2, 12) for _ in range(2)]
    assert all(b.seconds >= 0.04 for b in observed)  # SlowModel waits 0.05 s per call


def test_batches_respect_max_batch_and_an_oversized_request_goes_alone():
    model = SlowModel(delay=0.02)

    async def main():
        b = MicroBatcher(model, max_batch=4, max_queue=100)
        busy = asyncio.create_task(b(images(0)))
        await asyncio.sleep(0.005)
        outs = await asyncio.gather(b(images(1, 2, 3)), b(images(4, 5)), b(images(*range(6, 16))))
        await busy
        b.close()
        return [o.outputs for o in outs]

    outs = asyncio.run(main())
    assert [o[:, 0].tolist() for o in outs] == [[1, 2, 3], [4, 5], list(range(6, 16))]
    assert model.calls == [1, 3, 2, 10]


def test_a_full_queue_refuses_instead_of_growing():
    model = SlowModel(delay=0.2)

    async def main():
        b = MicroBatcher(model, max_batch=8, max_queue=3)
        busy = asyncio.create_task(b(images(0)))
        await asyncio.sleep(0.01)  # taken off the queue: the model runs it
        waiting = asyncio.create_task(b(images(1, 2, 3)))
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded, match="3 images are already waiting"):
            await b(images(4))
        model.release.set()
        out = (await waiting).outputs, (await busy).outputs
        assert b.queued == 0
        assert (await b(images(5))).outputs.tolist() == [[5.0]]  # room again once drained
        b.close()
        return out

    waiting, busy = asyncio.run(main())
    assert waiting[:, 0].tolist() == [1, 2, 3] and busy.tolist() == [[0.0]]


def test_a_failing_batch_fails_its_callers_and_the_next_batch_still_runs():
    model = SlowModel(delay=0.0, fail_on=7)

    async def main():
        b = MicroBatcher(model, max_batch=8, max_queue=100)
        with pytest.raises(RuntimeError, match="model failed"):
            await b(images(7))
        out = (await b(images(8))).outputs
        b.close()
        return out

    assert asyncio.run(main()).tolist() == [[8.0]]


def test_a_failing_on_batch_does_not_fail_the_answers(caplog):
    def broken(batch):
        raise ValueError("metrics broke")

    async def main():
        b = MicroBatcher(SlowModel(delay=0), max_batch=8, max_queue=10, on_batch=broken)
        out = (await b(images(5, 6))).outputs
        b.close()
        return out

    assert asyncio.run(main()).tolist() == [[5], [6]]
    assert "on_batch failed" in caplog.text


class Offset(SlowModel):
    """A second 'model': first pixel plus `offset`, so each answer shows who computed it."""

    def __init__(self, offset: float, delay: float = 0.05) -> None:
        super().__init__(delay)
        self.offset = offset

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return super().__call__(batch) + self.offset


def test_a_swap_takes_effect_between_batches_and_each_answer_names_its_model():
    old, new = Offset(0), Offset(1000)

    async def main():
        b = MicroBatcher(old, max_batch=64, max_queue=100)
        running = asyncio.create_task(b(images(1)))
        await asyncio.sleep(0.01)  # the old model is computing this batch
        waiting = [asyncio.create_task(b(images(k))) for k in (2, 3)]
        await asyncio.sleep(0)
        assert b.install("champion", new) is old
        answers = [await running, *[await w for w in waiting]]
        b.close()
        return answers

    first, *later = asyncio.run(main())
    # the batch already running finishes on the old model; the ones waiting run on the new
    assert first.model is old and first.outputs.tolist() == [[1.0]]
    assert all(a.model is new for a in later)
    assert [a.outputs.tolist() for a in later] == [[[1002.0]], [[1003.0]]]
    assert old.calls == [1] and new.calls == [2]  # no batch mixed the two


def test_canary_jobs_run_on_the_challenger_in_batches_of_their_own():
    champion, challenger = Offset(0, delay=0.02), Offset(1000, delay=0.02)

    async def main():
        b = MicroBatcher(champion, max_batch=64, max_queue=100)
        b.install(CHALLENGER, challenger)
        busy = asyncio.create_task(b(images(0)))
        await asyncio.sleep(0.005)
        routes = ["champion", CHALLENGER, "champion", CHALLENGER, "champion"]
        answers = await asyncio.gather(*(b(images(k), "", r) for k, r in enumerate(routes, 1)))
        await busy
        b.install(CHALLENGER, None)  # no challenger: its route falls back to the champion
        fallback = await b(images(9), "", CHALLENGER)
        b.close()
        return answers, fallback

    answers, fallback = asyncio.run(main())
    assert [a.model for a in answers] == [champion, challenger, champion, challenger, champion]
    assert [a.outputs[0, 0] for a in answers] == [1, 1002, 3, 1004, 5]
    assert champion.calls == [1, 3, 1] and challenger.calls == [2]  # one batch per route
    assert fallback.model is champion


def test_busy_for_tells_a_long_model_call_from_an_idle_one():
    model = SlowModel(delay=5)

    async def main():
        b = MicroBatcher(model, max_batch=8, max_queue=10)
        assert b.busy_for() == 0.0
        task = asyncio.create_task(b(images(1)))
        await asyncio.sleep(0.2)
        during = b.busy_for()
        model.release.set()
        await task
        after = b.busy_for()
        b.close()
        return during, after

    during, after = asyncio.run(main())
    assert during >= 0.15 and after == 0.0
