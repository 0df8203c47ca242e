"""The decoding sandbox (service/sandbox.py) with real child processes: a result or a refusal
comes back, a CPU overrun is killed at the timeout and the child replaced, waiting for the CPU is
not counted as cost (a starved child is Overloaded, later), and too many waiting is Overloaded."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from service.batcher import Overloaded
from service.refusals import Rejected
from service.sandbox import Sandbox, Slots


def refuse() -> None:
    raise Rejected("not_an_image", "no")


def grab(mb: int) -> int:
    return len(bytearray(mb * 2**20))


def burn(seconds: float) -> None:
    """Busy for `seconds` of this process's CPU time, like a decoder on a costly file."""
    while time.process_time() < seconds:
        pass


def pause(seconds: float) -> str:
    """No CPU for `seconds`: what a decoder sees when busy workers take every core."""
    time.sleep(seconds)
    return "finished"


def test_results_refusals_timeouts_and_memory_come_back_as_what_they_are():
    async def run() -> None:
        # waiting is no cost, and a busy machine may keep the niced child waiting: 60 s allowed
        sandbox = Sandbox(1, timeout_s=1.0, memory_bytes=256 * 2**20, max_waiting=4, wall_s=60)
        try:
            assert await sandbox(sum, [1, 2, 3]) == 6
            with pytest.raises(Rejected) as caught:
                await sandbox(refuse)
            assert caught.value.reason == "not_an_image"
            child = await sandbox(os.getpid)
            assert await sandbox(os.getpid) == child  # a refusal keeps the child
            started = time.monotonic()
            with pytest.raises(Rejected) as caught:
                await sandbox(burn, 30)
            assert caught.value.reason == "too_costly"
            assert "s of CPU" in str(caught.value)
            assert time.monotonic() - started < 30  # 1 s of CPU, not the 30 it asked for
            assert await sandbox(os.getpid) != child  # a fresh child after the kill
            child = await sandbox(os.getpid)
            with pytest.raises(Rejected) as caught:
                await sandbox(grab, 1024)  # a MemoryError inside the child
            assert caught.value.reason == "too_costly"
            assert await sandbox(grab, 16) == 16 * 2**20
            assert await sandbox(os.getpid) != child  # its heap may be fragmented: replaced
        finally:
            sandbox.close()

    asyncio.run(run())


def test_waiting_for_the_cpu_is_not_cost_but_a_starved_child_is_given_up():
    """1 s of CPU allowed: 1.5 s without CPU still answers; past 4 s of waiting (by default
    4 × the CPU allowed), Overloaded."""

    async def run() -> None:
        sandbox = Sandbox(slots=1, timeout_s=1.0, memory_bytes=256 * 2**20, max_waiting=4)
        assert sandbox.wall_s == 4.0
        try:
            assert await sandbox(sum, [1]) == 1  # the child started
            assert await sandbox(pause, 1.5) == "finished"
            started = time.monotonic()
            with pytest.raises(Overloaded, match="too little CPU"):
                await sandbox(pause, 30)
            assert 4 <= time.monotonic() - started < 8
            assert await sandbox(sum, [1, 1]) == 2
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
