"""The decoding sandbox (service/sandbox.py) with real child processes: a result or a refusal
comes back, an overrun is killed at the timeout and the child replaced, and too many waiting is
Overloaded."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.batcher import Overloaded
from service.refusals import Rejected
from service.sandbox import Sandbox, Slots


def refuse() -> None:
    raise Rejected("not_an_image", "no")


def grab(mb: int) -> int:
    return len(bytearray(mb * 2**20))


def test_results_refusals_timeouts_and_memory_come_back_as_what_they_are():
    async def run() -> None:
        sandbox = Sandbox(slots=1, timeout_s=1.0, memory_bytes=256 * 2**20, max_waiting=4)
        try:
            assert await sandbox(sum, [1, 2, 3]) == 6
            with pytest.raises(Rejected) as caught:
                await sandbox(refuse)
            assert caught.value.reason == "not_an_image"
            started = time.monotonic()
            with pytest.raises(Rejected) as caught:
                await sandbox(time.sleep, 30)
            assert caught.value.reason == "too_costly"
            assert time.monotonic() - started < 5
            with pytest.raises(Rejected) as caught:
                await sandbox(grab, 1024)
            assert caught.value.reason == "too_costly"
            assert await sandbox(grab, 16) == 16 * 2**20  # a fresh child after each kill
        finally:
            sandbox.close()

    asyncio.run(run())


def test_slots_refuse_past_the_waiting_limit():
    async def run() -> list[str]:
        slots = Slots(size=1, max_waiting=2, what="things")
        outcomes: list[str] = []

        async def hold() -> None:
            try:
                async with slots():
                    await asyncio.sleep(0.2)
                outcomes.append("done")
            except Overloaded:
                outcomes.append("overloaded")

        await asyncio.gather(*(hold() for _ in range(5)))
        return outcomes

    outcomes = asyncio.run(run())
    assert sorted(outcomes) == ["done"] * 3 + ["overloaded"] * 2


def test_a_cancelled_caller_does_not_hand_a_busy_child_to_the_next():
    async def run() -> int:
        sandbox = Sandbox(slots=1, timeout_s=5.0, memory_bytes=256 * 2**20, max_waiting=4)
        try:
            first = asyncio.ensure_future(sandbox(time.sleep, 0.5))
            await asyncio.sleep(0.2)
            first.cancel()  # e.g. BentoML's request timeout
            return await sandbox(sum, [2, 3])  # waits for the child, then gets its own answer
        finally:
            sandbox.close()

    assert asyncio.run(run()) == 5
