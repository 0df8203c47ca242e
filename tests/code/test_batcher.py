"""The shared micro-batcher: one model call for whatever is waiting, answers routed back exactly."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from service.batcher import MicroBatcher, Overloaded


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
        return await first, rest

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
        return outs

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
        out = await waiting, await busy
        assert b.queued == 0
        assert (await b(images(5))).tolist() == [[5.0]]  # room again once the queue drained
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
        out = await b(images(8))
        b.close()
        return out

    assert asyncio.run(main()).tolist() == [[8.0]]


def test_a_failing_on_batch_does_not_fail_the_answers(caplog):
    def broken(batch):
        raise ValueError("metrics broke")

    async def main():
        b = MicroBatcher(SlowModel(delay=0), max_batch=8, max_queue=10, on_batch=broken)
        out = await b(images(5, 6))
        b.close()
        return out

    assert asyncio.run(main()).tolist() == [[5], [6]]
    assert "on_batch failed" in caplog.text
