"""The delivery worker of ``serve``: a thread of its own, with an event loop of its own.

Claiming, rendering, sending, the breaker and retries then never take time from the loop that
answers Dovecot. The thread runs what ``policy-server worker`` runs (``process.delivery_worker``):
its own store connection, channels, renderer, admin alerts and breaker, all opened on its loop
(uvloop where installed); only the metrics are shared (prometheus-client is thread-safe).

The answering loop talks to it through ``Worker.wake``, ``Worker.use_renderer`` and ``stop``,
each of which crosses to the thread's loop with ``call_soon_threadsafe``; it never blocks on it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading

from ..config import Config
from ..service import eventloop
from ..service.metrics import Metrics
from .process import delivery_worker
from .worker import Worker

log = logging.getLogger("policy_server.worker")

#: beyond ``[queue] stop_timeout_s``: how long closing the channels and the store may take
CLOSE_GRACE_S = 10.0


class DeliveryThread:
    """Runs a delivery worker on a thread and loop of its own: ``start``, then ``stop``."""

    def __init__(self, config: Config, metrics: Metrics | None = None) -> None:
        self._config = config
        self._metrics = metrics
        self._thread = threading.Thread(target=self._main, name="delivery-worker", daemon=True)
        #: the thread's loop, set as soon as it runs
        self.loop: asyncio.AbstractEventLoop | None = None
        #: the worker, built on the thread's loop; set when ``start`` returns
        self.worker: Worker | None = None
        #: ``run_forever`` of the worker, a task on the thread's loop
        self.task: asyncio.Task[None] | None = None
        self._started: concurrent.futures.Future[Worker] = concurrent.futures.Future()
        self._ended: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._stop_asked = False
        self._stop: asyncio.Event | None = None

    @property
    def running(self) -> bool:
        """Whether the worker's task runs (False once it or the thread ended)."""
        task = self.task
        return self._thread.is_alive() and task is not None and not task.done()

    async def start(self) -> Worker:
        """Start the thread; returns its worker once the store and the channels are open there
        (their failure is raised here)."""
        self._thread.start()
        try:
            return await asyncio.wrap_future(self._started)
        except BaseException:
            self._ask_stop()
            raise

    async def stop(self) -> bool:
        """Stop the worker, without blocking the calling loop: deliveries in flight get ``[queue]
        stop_timeout_s`` to finish, then it puts back what it holds; the channels, the store and
        the thread's loop close and the thread is joined. False if it did not end in time
        (``CLOSE_GRACE_S`` more), which is logged."""
        self._ask_stop()
        if not self._thread.is_alive():
            return True  # never started, or ended already
        timeout = self._config.queue.stop_timeout_s + CLOSE_GRACE_S
        await asyncio.wait({asyncio.wrap_future(self._ended)}, timeout=timeout)
        if self._ended.done():
            # the thread has nothing left to do but return
            await asyncio.to_thread(self._thread.join, CLOSE_GRACE_S)
            return True
        log.error("delivery worker thread did not stop within %.0f s", timeout)
        return False

    def _ask_stop(self) -> None:
        # the flag first, then the loop: the thread publishes its loop first, then reads the
        # flag; one of the two sides sees the other
        self._stop_asked = True
        loop, stop = self.loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: it stopped already
                loop.call_soon_threadsafe(stop.set)

    def _main(self) -> None:
        try:
            with asyncio.Runner(loop_factory=eventloop.loop_factory()) as runner:
                runner.run(self._serve())
        except BaseException as exc:
            if not self._started.done():
                self._started.set_exception(exc)
            else:
                log.critical("delivery worker thread failed", exc_info=True)
        finally:
            if not self._started.done():  # pragma: no cover - _serve returns only after start
                self._started.set_exception(RuntimeError("delivery worker thread ended"))
            self._ended.set_result(None)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        self._stop = stop
        self.loop = loop
        log.debug("delivery worker thread: event loop %s", eventloop.loop_name(loop))
        async with delivery_worker(self._config, self._metrics) as worker:
            task = loop.create_task(worker.run_forever(), name="delivery-worker")
            task.add_done_callback(worker_ended)
            self.worker, self.task = worker, task
            self._started.set_result(worker)
            if self._stop_asked:
                stop.set()
            asked = loop.create_task(stop.wait(), name="delivery-worker-stop")
            await asyncio.wait({task, asked}, return_when=asyncio.FIRST_COMPLETED)
            asked.cancel()
            worker.stop()
            # deliveries in flight get a while to finish; past it the worker is cancelled, and
            # it puts back what it still holds either way (a store that cannot take them back
            # leaves them to their lease)
            await asyncio.wait({task}, timeout=self._config.queue.stop_timeout_s)
            if not task.done():
                task.cancel()
                await asyncio.wait({task})
            if task.cancelled() or task.exception() is not None:
                await worker.release()


def worker_ended(task: asyncio.Task[None]) -> None:
    """A dead worker must be loud: notices would pile up unseen (/readyz says so too)."""
    if not task.cancelled() and task.exception() is not None:
        log.critical("delivery worker stopped for good", exc_info=task.exception())
