"""AckGate (Slack acks, Discord defers): a request's work waits for a quiet moment — no request left to acknowledge and
none for QUIET_AFTER — and never longer than QUIET_WAIT, so a burst's acks go out before the jobs' work."""

from __future__ import annotations

import asyncio

from adapters.common.ackgate import QUIET_AFTER, QUIET_WAIT, AckGate


async def test_work_waits_until_the_last_request_is_acknowledged_and_a_moment_has_passed() -> None:
    loop = asyncio.get_running_loop()
    gate = AckGate()
    gate.enter()
    gate.enter()
    waiting = [asyncio.create_task(gate.quiet()) for _ in range(50)]
    await asyncio.sleep(QUIET_AFTER * 2)
    assert not any(task.done() for task in waiting)  # two requests not acknowledged yet
    gate.leave()
    await asyncio.sleep(QUIET_AFTER * 2)
    assert not any(task.done() for task in waiting)  # one still
    gate.leave()
    left = loop.time()
    await asyncio.wait_for(asyncio.gather(*waiting), 1)
    assert loop.time() - left >= QUIET_AFTER * 0.9  # a burst's next request may be on its way: wait a moment


async def test_with_nothing_to_acknowledge_work_starts_at_once() -> None:
    gate = AckGate()
    await asyncio.wait_for(gate.quiet(), QUIET_AFTER / 2)


async def test_under_a_steady_stream_of_requests_work_waits_no_longer_than_quiet_wait() -> None:
    loop = asyncio.get_running_loop()
    gate = AckGate()
    stop = asyncio.Event()

    async def stream() -> None:
        while not stop.is_set():
            gate.enter()
            await asyncio.sleep(QUIET_AFTER / 4)
            gate.leave()

    feeder = asyncio.create_task(stream())
    await asyncio.sleep(0.01)
    started = loop.time()
    await asyncio.wait_for(gate.quiet(), QUIET_WAIT * 3)
    waited = loop.time() - started
    stop.set()
    await feeder
    assert QUIET_WAIT * 0.9 <= waited <= QUIET_WAIT * 2


async def test_a_cancelled_waiter_leaves_the_others_waiting() -> None:
    gate = AckGate()
    gate.enter()
    first, second = asyncio.create_task(gate.quiet()), asyncio.create_task(gate.quiet())
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(QUIET_AFTER)
    assert not second.done()
    gate.leave()
    await asyncio.wait_for(second, 1)
