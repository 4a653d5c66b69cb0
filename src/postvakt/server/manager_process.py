"""The queue manager in a process of its own (DESIGN: process model).

The front accepts mail and commits it into the queue; it never delivers. The
manager moves mail on and delivers. Run in the front's process, both compete
for one interpreter and one core; in a process of its own the manager gets the
other core, and a slow delivery never delays a `250`.

Parent and child are tied by a pipe: the front writes one byte per committed
message (a wake-up; the manager also rescans on its own, so a lost byte costs
at most a rescan interval), and the child stops when the pipe reaches EOF, so a
killed parent never leaves an orphan delivering mail. Recovery after any crash
is the queue's own (`postvakt.queue`): whatever the child was doing stays in
active/ and is retried by the next manager.

If the child dies, the parent logs it and starts another after a pause; mail
keeps being accepted meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from postvakt import config as config_mod
from postvakt.config import Config, ConfigError
from postvakt.directory import Directory
from postvakt.queue import Queue
from postvakt.server.process import SHUTDOWN_GRACE

log = logging.getLogger("postvakt.manager")

# How long a new manager waits for the queue lock held by one that is still
# finishing its deliveries (after a crash of the parent, say).
LOCK_WAIT = 60.0
# Pause before starting a manager again after it died.
RESPAWN_DELAY = 1.0


class Coalesced:
    """A wake-up asked for any number of times in one turn of the event loop is
    sent once, at the end of that turn: a batch of commits that ends fifty
    sessions' DATA at once costs one write to the queue manager, not fifty.
    Outside an event loop it is sent at once."""

    def __init__(self, send: Callable[[], None]) -> None:
        self._send = send
        self._due = False

    def __call__(self) -> None:
        if self._due:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._send()
            return
        self._due = True
        loop.call_soon(self._fire)

    def _fire(self) -> None:
        self._due = False
        self._send()


class ManagerProcess:
    """The parent's handle: start, wake, reload, stop; restarts a dead child."""

    def __init__(self, config: Config, config_path: Path | None) -> None:
        self._config = config
        self.config_path = config_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._wake_w: int | None = None
        self._stopping = False
        self._watch: asyncio.Task[None] | None = None
        self.wake = Coalesced(self._send_wake)

    @property
    def config(self) -> Config:
        return self._config

    @config.setter
    def config(self, config: Config) -> None:
        """A reload in the parent: the child re-reads the same file."""
        self._config = config
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)

    def _spawn(self) -> None:
        r, w = os.pipe()
        os.set_blocking(w, False)
        # Not through the `postvakt` command: only what the manager runs (server/__main__.py).
        args = [sys.executable, "-m", "postvakt.server", "--role", "queue-manager"]
        args += ["--wake-fd", str(r)]
        if self.config_path is not None:
            args += ["--config", str(self.config_path)]
        self.proc = subprocess.Popen(args, pass_fds=(r,), stdin=subprocess.DEVNULL)
        os.close(r)
        if self._wake_w is not None:
            os.close(self._wake_w)
        self._wake_w = w

    async def start(self) -> None:
        self._spawn()
        self._watch = asyncio.get_running_loop().create_task(self._watchdog())

    async def _watchdog(self) -> None:
        while not self._stopping:
            await asyncio.sleep(0.5)
            proc = self.proc
            if proc is None or self._stopping:
                continue
            code = proc.poll()
            if code is not None and not self._stopping:
                log.error(
                    "queue manager exited with %s; starting another in %.0f s", code, RESPAWN_DELAY
                )
                await asyncio.sleep(RESPAWN_DELAY)
                if not self._stopping:
                    self._spawn()

    def _send_wake(self) -> None:
        if self._wake_w is None:
            return
        with contextlib.suppress(BlockingIOError, BrokenPipeError, OSError):
            os.write(self._wake_w, b"\0")  # a full pipe means a wake-up is pending anyway

    async def stop(self, timeout: float) -> None:
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, timeout + 5)
            except subprocess.TimeoutExpired:
                log.error("queue manager did not stop in time; killed (its deliveries are retried)")
                proc.kill()
                await asyncio.to_thread(proc.wait)
        if self._wake_w is not None:
            os.close(self._wake_w)
            self._wake_w = None


async def run_queue_manager(config: Config, config_path: Path | None, wake_fd: int) -> int:
    """The child: one QueueManager until SIGTERM or until the parent is gone."""
    # Here, not at the top: the delivery stack costs every front process and
    # worker 50-150 ms to import (measured), and only this child delivers.
    from postvakt.queue.manager import QueueManager, QueueManagerError

    directory = Directory.for_config(config, live=True)
    manager = QueueManager(config, directory, Queue(config.queue_root))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    deadline = loop.time() + LOCK_WAIT
    while True:
        try:
            await manager.start()
            break
        except QueueManagerError as e:
            if loop.time() > deadline:
                log.error("%s; giving up", e)
                return 1
            await asyncio.sleep(0.2)

    def on_wake() -> None:
        try:
            data = os.read(wake_fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the front is gone: stop too, never deliver as an orphan
            loop.remove_reader(wake_fd)
            stop.set()
            return
        manager.wake()

    def reload() -> None:
        if config_path is None:
            return
        try:
            new = config_mod.load(config_path)
        except ConfigError as e:
            log.error("reload refused, keeping the running config: %s", e)
            return
        if config_mod.restart_only_changes(manager.config, new):
            return  # the front refused it too, and said why
        manager.config = new

    os.set_blocking(wake_fd, False)
    loop.add_reader(wake_fd, on_wake)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the parent decides when we stop
    loop.add_signal_handler(signal.SIGHUP, reload)
    await stop.wait()
    await manager.stop(SHUTDOWN_GRACE)
    directory.close()
    return 0
