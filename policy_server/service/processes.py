"""``serve --workers N``: N service processes sharing one listening port (SO_REUSEPORT).

The kernel spreads connections over the processes; each has its own event loop, group commit
and delivery worker, and they share the store, whose transactions keep claims and history
updates correct across processes. This supervisor starts them and speaks for them:

* **READY**: each process's systemd notifications (``NOTIFY_SOCKET``) come to a datagram socket
  of the supervisor's, which tells systemd READY=1 once every process listens (and again after
  a reload, once every process has reloaded).
* **Metrics**: the processes count in prometheus-client's multiprocess mode, in files of a
  directory of the supervisor's; the supervisor alone listens on ``[metrics] listen`` and serves
  their sum. Counters and histograms add up, and the counts of a process that died stay in the
  sum, so a counter never goes back when a process is replaced; the gauges every process reads
  from the shared store take the most recent value instead of a sum. At each scrape the
  supervisor first has every process refresh its gauges and run its readiness checks (over a
  unix socket per process), and ``/readyz`` is 503 with the reasons while any process is not
  ready.
* **Deliveries** (``--delivery process``): one more process, ``policy-server worker``, niced
  (``DELIVERY_NICE``) so that the kernel gives the service processes the CPU first, while the
  service processes run no worker of their own. It is supervised, counted and monitored as they
  are; it finds new notices at its ``[queue] poll_interval_s``.
* **Restarts**: a process that exits is started again after a backoff that doubles with each
  crash of that process (0.5 s, 1 s, 2 s, ... 30 s; from the start again once it ran a minute);
  more than 5 exits within 60 s stops every process, and the supervisor exits with status 1
  and one line saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
from collections import deque
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import multiprocess

from .. import __version__
from ..config import Config
from . import listen
from .metrics import MONITOR_DIR_ENV, child_socket
from .pool_monitoring import CHILD_TIMEOUT_S, PoolMonitoring
from .systemd import monotonic_usec, notify

log = logging.getLogger("policy_server.processes")

PR_SET_PDEATHSIG = 1
#: the first restart's delay; it doubles with each crash of the same process, up to the max
BACKOFF_S = 0.5
BACKOFF_MAX_S = 30.0
#: more exits than this within the window: the supervisor gives up
CRASH_LIMIT = 5
CRASH_WINDOW_S = 60.0
#: after SIGTERM, how long the processes get to stop before they are killed
STOP_TIMEOUT_S = 60.0
#: the niceness of the delivery process (``--delivery process``)
DELIVERY_NICE = 10

_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


class GiveUp(Exception):
    """The supervisor stopped every process: the one line that says why."""


def _die_with_parent() -> None:
    """In a child, before exec: ask Linux to send SIGTERM when the parent dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: children outlive a killed parent


def _deliverer() -> None:
    """In the delivery process, before exec: niced, and ended with its parent."""
    with contextlib.suppress(OSError):
        os.nice(DELIVERY_NICE)
    _die_with_parent()


def _how(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"with status {returncode}"


def _exited(returncode: int) -> str:
    return "was " + _how(returncode) if returncode < 0 else "exited " + _how(returncode)


@dataclass
class Slot:
    """One of the N places a service process runs in (numbered from 1)."""

    number: int
    #: the delivery process (``--delivery process``), not a service process
    delivery: bool = False
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    #: the process said READY=1 (and not RELOADING=1 or STOPPING=1 since)
    ready: bool = False
    #: exits in a row, each of them sooner than CRASH_WINDOW_S after its start
    crashes: int = 0
    restart: asyncio.TimerHandle | None = None
    restart_at: float = 0.0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def name(self) -> str:
        return "delivery process" if self.delivery else f"process {self.number}"


class Supervisor:
    """Runs ``count`` copies of ``command`` (and ``delivery``, a delivery process, if given)
    and speaks for them (see the module's text)."""

    def __init__(
        self,
        command: Sequence[str],
        count: int,
        config: Config,
        delivery: Sequence[str] | None = None,
    ) -> None:
        self.command = list(command)
        self.delivery = list(delivery) if delivery else None
        self.config = config
        self.slots = [Slot(number) for number in range(1, count + 1)]
        if self.delivery:
            self.slots.append(Slot(count + 1, delivery=True))
        #: every process it runs, the delivery process too
        self.count = len(self.slots)
        self.stopping = False
        self.failure = ""
        self.restarts = 0
        self.crash_times: deque[float] = deque()
        self.announce = True  # READY=1 is owed to systemd once every process is ready
        self.reloading = False
        self.ready_count = -1
        self.stopped = asyncio.Event()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.run_dir = tempfile.mkdtemp(prefix="policy-server-")
        self.metrics_dir = os.path.join(self.run_dir, "metrics")
        self.notify_path = os.path.join(self.run_dir, "notify")
        self.notify_sock: socket.socket | None = None
        self.monitoring = PoolMonitoring(self)

    # --- the processes

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["NOTIFY_SOCKET"] = self.notify_path
        if self.config.metrics.enabled:
            env["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
            env[MONITOR_DIR_ENV] = self.run_dir
        else:
            env.pop(MONITOR_DIR_ENV, None)
        return env

    async def _start(self, slot: Slot) -> None:
        slot.restart = None
        started = time.monotonic()
        try:
            # the command is this interpreter running this package: no outside input
            if slot.delivery and self.delivery:
                command, before = self.delivery, _deliverer
            else:
                command, before = self.command, _die_with_parent
            process = await asyncio.create_subprocess_exec(
                *command, env=self._environment(), preexec_fn=before
            )
        except OSError as exc:
            slot.started = started
            self._crashed(slot, f"service {slot.name()} not started: {exc}", f"not started: {exc}")
            return
        slot.process, slot.started, slot.ready = process, started, False
        self._spawn_task(self._watch(slot, process), f"watch-{slot.number}")
        log.info("service %s started (pid %d)", slot.name(), process.pid)
        if self.stopping:  # told to stop while it was being started
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)

    def _spawn_task(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _watch(self, slot: Slot, process: asyncio.subprocess.Process) -> None:
        returncode = await process.wait()
        slot.process, slot.ready = None, False
        if self.config.metrics.enabled:
            # its counts stay in the sum; its gauges go
            multiprocess.mark_process_dead(process.pid, self.metrics_dir)  # type: ignore[no-untyped-call]
        with contextlib.suppress(OSError):
            os.unlink(child_socket(self.run_dir, process.pid))
        self._readiness_changed()
        if self.stopping:
            if all(s.process is None for s in self.slots):
                self.stopped.set()
            return
        what = f"service {slot.name()} (pid {process.pid}) {_exited(returncode)}"
        self._crashed(slot, what, _how(returncode))

    def _crashed(self, slot: Slot, what: str, how: str) -> None:
        """A process ended unasked (or could not start): start it again, or give up."""
        now = time.monotonic()
        self.crash_times.append(now)
        while self.crash_times and now - self.crash_times[0] > CRASH_WINDOW_S:
            self.crash_times.popleft()
        if len(self.crash_times) > CRASH_LIMIT:
            log.error("%s", what)
            self.give_up(
                f"service processes exited {len(self.crash_times)} times within"
                f" {CRASH_WINDOW_S:g} s, the last one {how}; stopping"
            )
            return
        if now - slot.started >= CRASH_WINDOW_S:
            slot.crashes = 0  # it ran long enough: this is a new crash, not a crash loop
        delay = min(BACKOFF_S * 2**slot.crashes, BACKOFF_MAX_S)
        slot.crashes += 1
        log.error("%s; restarting in %g s", what, delay)
        slot.restart_at = now + delay
        slot.restart = asyncio.get_running_loop().call_later(delay, self._restart, slot)

    def _restart(self, slot: Slot) -> None:
        if self.stopping:
            return
        self.restarts += 1
        self._spawn_task(self._start(slot), f"start-{slot.number}")

    def _signal_all(self, signum: int) -> None:
        for slot in self.slots:
            if slot.process is not None and slot.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.process.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Stop every process (SIGTERM or SIGINT, passed on); no restart from now on."""
        if not self.stopping:
            self.stopping = True
            notify("STOPPING=1")
            for slot in self.slots:
                if slot.restart is not None:
                    slot.restart.cancel()
                    slot.restart = None
        self._signal_all(signum)
        if all(s.process is None for s in self.slots):
            self.stopped.set()

    def give_up(self, reason: str) -> None:
        self.failure = reason
        self.stop()

    def reload(self) -> None:
        """SIGHUP: every process reloads; READY=1 again once each of them is done."""
        notify("RELOADING=1", monotonic_usec())
        self.announce = self.reloading = True
        # a process still starting reads every file as it starts (and could not take a
        # SIGHUP before its handler is in place): only the ready ones reload
        reloading = [s for s in self.slots if s.ready and s.process is not None]
        for slot in reloading:
            slot.ready = False
        self._readiness_changed()
        for slot in reloading:
            if slot.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    slot.process.send_signal(signal.SIGHUP)

    # --- what the processes tell systemd, which comes here

    def _open_notify_socket(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        sock.bind(self.notify_path)
        # the kernel adds the sender's pid to each datagram
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.setblocking(False)
        self.notify_sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._notified)

    def _notified(self) -> None:
        assert self.notify_sock is not None
        for _ in range(64):  # what is waiting now; the loop calls again for more
            try:
                data, ancillary, _flags, _address = self.notify_sock.recvmsg(
                    4096, socket.CMSG_SPACE(_CREDENTIALS.size)
                )
            except (BlockingIOError, InterruptedError):
                return
            pid = None
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = _CREDENTIALS.unpack(payload[: _CREDENTIALS.size])[0]
            slot = next((s for s in self.slots if pid is not None and s.pid == pid), None)
            if slot is not None:
                self._state(slot, data.decode(errors="replace").split("\n"))

    def _state(self, slot: Slot, states: Iterable[str]) -> None:
        for state in states:
            if state == "READY=1":
                slot.ready = True
            elif state in ("RELOADING=1", "STOPPING=1"):
                slot.ready = False
        self._readiness_changed()

    def _readiness_changed(self) -> None:
        ready = sum(1 for slot in self.slots if slot.ready and slot.process is not None)
        if ready == self.ready_count or self.stopping:
            return
        self.ready_count = ready
        status = f"STATUS={ready} of {self.count} service processes ready"
        if ready == self.count and self.announce:
            notify("READY=1", status)
            if self.reloading:
                log.info("every service process reloaded")
            else:
                services = sum(1 for slot in self.slots if not slot.delivery)
                log.info(
                    "policy-server %s: %d service processes listening on %s%s",
                    __version__,
                    services,
                    self.config.server.listen,
                    ", and a delivery process" if self.delivery else "",
                )
            self.announce = self.reloading = False
        else:
            notify(status)

    # --- the whole

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop, signum)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            self._open_notify_socket()
            if self.config.metrics.enabled:
                await self.monitoring.start()
            for slot in self.slots:
                if not self.stopping:
                    await self._start(slot)
            await self.stopped.wait()
        finally:
            await self._stop_everything()
        if self.failure:
            raise GiveUp(self.failure)
        return 0

    async def _stop_everything(self) -> None:
        self.stop()
        loop = asyncio.get_running_loop()
        deadline, killed = loop.time() + STOP_TIMEOUT_S, False
        # the watch of each process ends when it exits; a start under way ends at once
        while self.tasks:
            remaining = deadline - loop.time()
            if remaining > 0:
                await asyncio.wait(set(self.tasks), timeout=remaining)
            elif not killed:
                log.error("service processes still running after %g s: killed", STOP_TIMEOUT_S)
                self._signal_all(signal.SIGKILL)
                deadline, killed = loop.time() + CHILD_TIMEOUT_S, True
            else:
                break
        for task in list(self.tasks):
            task.cancel()
        if self.notify_sock is not None:
            asyncio.get_running_loop().remove_reader(self.notify_sock.fileno())
            self.notify_sock.close()
        await self.monitoring.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)


def supervise(
    child_args: Sequence[str],
    count: int,
    config: Config,
    delivery_args: Sequence[str] | None = None,
) -> int:
    """Run ``count`` copies of ``python -m policy_server <child_args>`` (and one of
    ``<delivery_args>``, if given) until told to stop.

    Raises :class:`~.listen.ListenError` when the address cannot be listened on (each process
    would fail on it) and :class:`GiveUp` when the processes keep exiting.
    """
    listen.close(listen.bind(config.server.listen, reuse_port=True))
    command = [sys.executable, "-m", "policy_server", *child_args]
    delivery = [sys.executable, "-m", "policy_server", *delivery_args] if delivery_args else None

    async def main() -> int:
        return await Supervisor(command, count, config, delivery).run()

    return asyncio.run(main())
