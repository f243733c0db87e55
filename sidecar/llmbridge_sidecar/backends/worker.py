"""One long-lived worker thread per loaded in-process model (gguf, transformers).

llama.cpp and torch generate synchronously and one generation at a time per
model, so each model gets exactly one OS thread, started with the model and
fed one job at a time. Everything else happens on the event loop:

* **Waiting** requests wait for their turn on an ``asyncio.Lock`` (FIFO), not
  on a thread: 100 queued requests cost 100 lock waiters, no executor thread
  each, and cancelling one just removes it from the line; it never runs.
* **Output** (tokens) goes from the thread to the loop through
  ``loop.call_soon_threadsafe``, at most one wake-up pending per job: a burst of
  tokens produced while the loop is busy is handed over in one wake-up.
* **Every job ends its consumer**: the thread always queues the end marker in
  ``finally``, after a normal return, an early return (a job cancelled before
  it started), or an exception (handed over and raised in the consumer).
* **Cancel**: leaving the consumer (a cancelled request, ``aclose``) sets the
  job's ``cancelled`` event, which the job checks between tokens; the turn is
  released at once and the next job runs when the thread leaves the old one.

``call`` runs one function the same way (loading or freeing the model), so
every use of the engine happens on the same thread, in order.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
from collections.abc import AsyncGenerator, Callable
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
# A job's body: run on the worker thread, emits its output through the first
# argument, and stops early once the event is set.
Generate = Callable[[Callable[[T], None], threading.Event], None]


async def next_handed_over(items: collections.deque[T], ready: asyncio.Event) -> T:
    """The oldest of ``items``, which another thread appends to and then has
    ``ready`` set on the loop (``call_soon_threadsafe``); waits for one."""
    while not items:
        ready.clear()
        if items:  # appended between the check and the clear
            break
        await ready.wait()
    return items.popleft()


class _End:
    """The last item of every job."""


class _Failure:
    """An exception the job raised, handed to the consumer to raise."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = _End()


class _Stop:
    """The worker thread's last job: leave, then call ``notify`` on ``loop``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, notify: Callable[[], None]) -> None:
        self.loop = loop
        self.notify = notify


class _Job(Generic[T]):
    """One job and its hand-over buffer between the worker thread and the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, generate: Generate[T]) -> None:
        self.loop = loop
        self.generate = generate
        self.cancelled = threading.Event()
        # Appended on the thread, popped on the loop (deque ops are atomic).
        self.items: collections.deque[T | _Failure | _End] = collections.deque()
        self.ready = asyncio.Event()
        # True while a wake-up is scheduled and has not run yet.
        self._wake_pending = False

    def emit(self, item: T | _Failure | _End) -> None:
        """Thread side: hand one item over; wake the loop unless a wake-up is pending."""
        self.items.append(item)
        if self._wake_pending:
            return
        self._wake_pending = True
        try:
            self.loop.call_soon_threadsafe(self._wake)
        except RuntimeError:
            pass  # the loop is closed (process exit): nobody is listening

    def _wake(self) -> None:
        # Cleared before set(): an item appended after this line schedules a new wake-up.
        self._wake_pending = False
        self.ready.set()

    async def next_item(self) -> T | _Failure | _End:
        return await next_handed_over(self.items, self.ready)


class ModelWorker:
    """The one thread that runs a model's jobs; see the module docstring.

    Use from one event loop. ``aclose`` stops the thread after the jobs
    already in line.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._turn = asyncio.Lock()
        self._jobs: queue.SimpleQueue[_Job[Any] | _Stop] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def stream(self, generate: Generate[T]) -> AsyncGenerator[T, None]:
        """Run ``generate(emit, cancelled)`` on the worker thread; yield what it emits.

        Waits (on the loop) for the jobs before it. Closing this generator
        early (a cancelled request) sets ``cancelled``.
        """
        async with self._turn:
            if self._closed:
                raise RuntimeError(f"{self._name} worker is closed")
            job = _Job(asyncio.get_running_loop(), generate)
            self._submit(job)
            try:
                while True:
                    item = await job.next_item()
                    if isinstance(item, _End):
                        return
                    if isinstance(item, _Failure):
                        raise item.error
                    yield item
            finally:
                job.cancelled.set()

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` on the worker thread, in turn with the generations; return its result."""

        def run(emit: Callable[[T], None], cancelled: threading.Event) -> None:
            emit(fn())

        results = self.stream(run)
        try:
            async for result in results:
                return result
        finally:
            await results.aclose()
        raise RuntimeError(f"{self._name} worker job returned nothing")

    async def aclose(self, final: Callable[[], None] | None = None) -> None:
        """Run ``final`` after every job in line (e.g. free the model), then stop the thread."""
        if self._closed:
            return
        if final is not None:
            await self.call(final)
        async with self._turn:
            self._closed = True
            thread, self._thread = self._thread, None
            if thread is None:
                return
            loop = asyncio.get_running_loop()
            stopped: asyncio.Future[None] = loop.create_future()

            def done() -> None:
                if not stopped.done():
                    stopped.set_result(None)

            # The thread's last act tells the loop it left: no executor thread joins it.
            self._jobs.put(_Stop(loop, done))
            await stopped

    def _submit(self, job: _Job[Any]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"{self._name}-worker", daemon=True
            )
            self._thread.start()
        self._jobs.put(job)

    def _run(self) -> None:
        """The worker thread: one job at a time until the stop marker."""
        while True:
            job = self._jobs.get()
            if isinstance(job, _Stop):
                break
            try:
                if not job.cancelled.is_set():
                    job.generate(job.emit, job.cancelled)
            except BaseException as e:  # handed to the consumer, which raises it
                job.emit(_Failure(e))
            finally:
                job.emit(_END)
        try:
            job.loop.call_soon_threadsafe(job.notify)
        except RuntimeError:
            pass  # the loop is closed: nobody waits
