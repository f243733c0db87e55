"""The in-process backends' worker thread (backends/worker.py), driven directly.

Jobs here are plain functions that block on events the test controls, so
every ordering below is forced, not timed: "answered at once" means answered
while the running job is still blocked.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from llmbridge_sidecar.backends.worker import ModelWorker

# Only reached if the worker is broken; a passing test never waits this long.
LIMIT_S = 30.0


async def collect(worker: ModelWorker, generate: Callable[..., None]) -> list[object]:
    return [item async for item in worker.stream(generate)]


def counting_job(n: int) -> Callable[[Callable[[int], None], threading.Event], None]:
    def generate(emit: Callable[[int], None], cancelled: threading.Event) -> None:
        for i in range(n):
            emit(i)

    return generate


async def test_jobs_run_one_at_a_time_on_one_thread() -> None:
    worker = ModelWorker("test")
    loop = asyncio.get_running_loop()
    lock = threading.Lock()
    running = 0
    most = 0
    threads: set[int] = set()
    gate = threading.Event()
    first_started = asyncio.Event()

    def job(emit: Callable[[int], None], cancelled: threading.Event) -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        threads.add(threading.get_ident())
        if not gate.is_set():
            loop.call_soon_threadsafe(first_started.set)
            gate.wait(LIMIT_S)
        for i in range(200):
            emit(i)
        with lock:
            running -= 1

    before = {t.ident for t in threading.enumerate()}
    tasks = [asyncio.create_task(collect(worker, job)) for _ in range(16)]
    await asyncio.wait_for(first_started.wait(), LIMIT_S)
    await asyncio.sleep(0)  # every other request is now waiting for its turn
    # The 15 waiting requests parked no thread: the worker is the only new one.
    (new,) = [t for t in threading.enumerate() if t.ident not in before]
    assert new.name == "test-worker"
    gate.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), LIMIT_S)
    assert all(r == list(range(200)) for r in results)
    assert most == 1
    assert threads == {new.ident}
    await worker.aclose()
    new.join(LIMIT_S)
    assert not new.is_alive()


async def test_cancel_of_a_waiting_request_is_at_once_and_it_never_runs() -> None:
    worker = ModelWorker("test")
    gate = threading.Event()
    started = threading.Event()
    ran: list[str] = []

    def blocking(emit: Callable[[str], None], cancelled: threading.Event) -> None:
        ran.append("first")
        emit("first token")
        started.set()
        gate.wait(LIMIT_S)
        emit("first done")

    def named(name: str) -> Callable[[Callable[[str], None], threading.Event], None]:
        def generate(emit: Callable[[str], None], cancelled: threading.Event) -> None:
            ran.append(name)
            emit(name)

        return generate

    first = asyncio.create_task(collect(worker, blocking))
    assert await asyncio.to_thread(started.wait, LIMIT_S)
    second = asyncio.create_task(collect(worker, named("second")))
    third = asyncio.create_task(collect(worker, named("third")))
    await asyncio.sleep(0)  # both are now waiting for their turn
    third.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(third, LIMIT_S)
    # Answered while the running job is still blocked inside the engine.
    assert not gate.is_set() and not first.done() and not second.done()
    gate.set()
    assert await asyncio.wait_for(first, LIMIT_S) == ["first token", "first done"]
    assert await asyncio.wait_for(second, LIMIT_S) == ["second"]
    assert ran == ["first", "second"]  # the cancelled one never ran
    await worker.aclose()


async def test_leaving_a_running_job_sets_cancelled_and_frees_the_turn() -> None:
    worker = ModelWorker("test")
    stopped = threading.Event()

    def endless(emit: Callable[[int], None], cancelled: threading.Event) -> None:
        i = 0
        while not cancelled.wait(0.001):  # a token every millisecond until cancelled
            emit(i)
            i += 1
        stopped.set()

    stream = worker.stream(endless)
    assert await asyncio.wait_for(anext(stream), LIMIT_S) == 0
    await stream.aclose()
    assert await asyncio.to_thread(stopped.wait, LIMIT_S)
    assert await asyncio.wait_for(collect(worker, counting_job(3)), LIMIT_S) == [0, 1, 2]
    await worker.aclose()


async def test_every_worker_path_ends_its_consumer() -> None:
    worker = ModelWorker("test")

    def returns_early(emit: Callable[[int], None], cancelled: threading.Event) -> None:
        return  # e.g. a model closed while the request waited: nothing emitted

    def fails(emit: Callable[[int], None], cancelled: threading.Event) -> None:
        emit(1)
        raise ValueError("engine failure")

    assert await asyncio.wait_for(collect(worker, returns_early), LIMIT_S) == []
    got: list[object] = []
    with pytest.raises(ValueError, match="engine failure"):
        async for item in worker.stream(fails):
            got.append(item)
    assert got == [1]
    # The worker still serves.
    assert await asyncio.wait_for(collect(worker, counting_job(2)), LIMIT_S) == [0, 1]
    await worker.aclose()


async def test_call_returns_the_result_in_turn() -> None:
    worker = ModelWorker("test")
    assert await worker.call(lambda: threading.current_thread().name) == "test-worker"
    with pytest.raises(ZeroDivisionError):
        await worker.call(lambda: 1 // 0)
    await worker.aclose()


async def test_aclose_runs_final_after_the_running_job_then_refuses_work() -> None:
    worker = ModelWorker("test")
    gate = threading.Event()
    order: list[str] = []

    def running(emit: Callable[[str], None], cancelled: threading.Event) -> None:
        emit("token")
        gate.wait(LIMIT_S)
        order.append("generation left the engine")

    stream = worker.stream(running)
    assert await asyncio.wait_for(anext(stream), LIMIT_S) == "token"
    await stream.aclose()  # cancelled, but still inside the "engine" until the gate opens
    closing = asyncio.create_task(worker.aclose(lambda: order.append("model freed")))
    await asyncio.sleep(0)
    assert not closing.done()
    gate.set()
    await asyncio.wait_for(closing, LIMIT_S)
    assert order == ["generation left the engine", "model freed"]
    assert worker.closed
    with pytest.raises(RuntimeError, match="closed"):
        await collect(worker, counting_job(1))
