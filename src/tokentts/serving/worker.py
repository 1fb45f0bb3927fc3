"""One generation at a time in a dedicated thread, behind a bounded queue.

Generation is CPU-bound and the model is not thread-safe, so every speech request becomes a
`Job` run by a single worker thread. A job is a function returning a generator of byte
chunks; the worker hands each chunk to the request's event loop as soon as it exists, which
is what makes the HTTP response stream. Between chunks the worker checks whether the job was
cancelled (client gone) or ran past its deadline, so neither keeps the model busy for long.

    worker = SerialWorker(max_waiting=8)
    job = worker.submit(lambda: produce_chunks(...), timeout=60)   # QueueFull when busy
    async for data in worker.results(job): ...                     # JobTimeout past the deadline
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator
from dataclasses import dataclass, field

from tokentts.errors import TokenttsError

log = logging.getLogger(__name__)

_END = object()  # sent after a job's last chunk


class QueueFull(Exception):
    """Every slot is taken: one job running and `max_waiting` waiting."""


class JobTimeout(Exception):
    pass


@dataclass(eq=False)
class Job:
    produce: Callable[[], Generator[bytes, None, None]]
    deadline: float  # time.monotonic() after which nobody waits for the result
    loop: asyncio.AbstractEventLoop
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def deliver(self, item: object) -> None:
        """Called from the worker thread; the item lands in the request's event loop."""
        try:
            self.loop.call_soon_threadsafe(self.outbox.put_nowait, item)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            self.cancelled.set()


class SerialWorker:
    def __init__(self, max_waiting: int):
        self.max_waiting = max_waiting
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: Job | None = None
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="tokentts-speech", daemon=True)
        self._thread.start()

    def stats(self) -> dict[str, int]:
        with self._changed:
            running = int(self._running is not None)
            return {"running": running, "waiting": len(self._waiting), "max_waiting": self.max_waiting}

    def submit(self, produce: Callable[[], Generator[bytes, None, None]], timeout: float) -> Job:
        """Queue a job from inside a running event loop; raises QueueFull when every slot is taken."""
        job = Job(produce, time.monotonic() + timeout, asyncio.get_running_loop())
        with self._changed:
            busy = self._running is not None
            if self._closed or len(self._waiting) >= self.max_waiting + (0 if busy else 1):
                raise QueueFull()
            self._waiting.append(job)
            self._changed.notify()
        return job

    def cancel(self, job: Job) -> None:
        """Give up on a job: a waiting one leaves the queue at once, a running one stops at its next chunk."""
        job.cancelled.set()
        with self._changed:
            if job in self._waiting:
                self._waiting.remove(job)

    async def results(self, job: Job) -> AsyncIterator[bytes]:
        """The job's chunks as they are produced; cancels the job when the consumer stops early."""
        try:
            while True:
                try:
                    item = await asyncio.wait_for(job.outbox.get(), timeout=max(0.0, job.deadline - time.monotonic()))
                except TimeoutError:
                    raise JobTimeout() from None
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.cancel(job)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            for job in [*self._waiting, *([self._running] if self._running else [])]:
                job.cancelled.set()
            self._waiting.clear()
            self._changed.notify()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._waiting and not self._closed:
                    self._changed.wait()
                if self._closed:
                    return
                job = self._running = self._waiting.popleft()
            try:
                self._execute(job)
            finally:
                with self._changed:
                    self._running = None

    def _execute(self, job: Job) -> None:
        if self._abandoned(job):
            return
        try:
            with contextlib.closing(job.produce()) as chunks:  # closing runs the generator's cleanup now
                for data in chunks:
                    if self._abandoned(job):
                        return
                    job.deliver(data)
            job.deliver(_END)
        except TokenttsError as exc:  # the request's own fault: no traceback in the log
            job.deliver(exc)
        except Exception as exc:  # reported to the request, which turns it into an HTTP error
            log.exception("generation failed")
            job.deliver(exc)

    @staticmethod
    def _abandoned(job: Job) -> bool:
        if job.cancelled.is_set() or time.monotonic() > job.deadline:
            log.info("stopped a generation: %s", "client gone" if job.cancelled.is_set() else "past its deadline")
            return True
        return False
