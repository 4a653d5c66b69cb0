"""Several front processes on one node (`[server] workers = N`).

One interpreter runs on one core. With N workers the parent process binds
every listening address (before any privilege drop; `listeners.bind_all`),
N times with SO_REUSEPORT, and starts N front processes, each serving its own
set of those sockets with its own event loop; the kernel spreads connections
over them. The parent itself serves no mail: it holds the sockets, runs the
one queue manager of the node (`manager_process`), the web listener and the
grant-report socket, and watches the workers.

    parent ── queue manager (one per node, as with one worker)
       ├──── worker 0  (sockets set 0)
       └──── worker 1  (sockets set 1)

Each worker is tied to the parent by two pipes: it writes to its own pipe one
byte when it is ready ("R") and one per committed message (a wake-up, which
the parent passes to the queue manager); it reads a pipe the parent holds
open, whose EOF means the parent is gone, so that no worker outlives it.

- A worker that dies is started again (after RESPAWN_DELAY) on the same
  sockets; connections waiting in their backlog are served by the new one.
- SIGHUP: the parent re-reads the config and passes the signal to every
  worker and the queue manager; each re-reads the same file.
- SIGTERM (or SIGINT): the parent passes SIGTERM to the workers, which finish
  their transactions (SHUTDOWN_GRACE) and exit, then stops the queue manager.

State that decides a relay — grants, outbound counters, login failures — is
never a worker's own: each worker opens the configured stores itself (they are
files every process of the node shares: SQLite in WAL mode), so a POP3 login
seen by one worker opens relaying in every other. What each worker keeps to
itself holds no shared truth: the credential cache (at most one password hash
check per worker per login) and its own count of open connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from postvakt.config import Config, ConfigError
from postvakt.server import notify
from postvakt.server.accept import connection_limit, raise_descriptor_limit
from postvakt.server.app import (
    bind_error,
    build_app,
    listen,
    reload_config,
    stop_front,
)
from postvakt.server.listeners import BindError, Opener, bind_all
from postvakt.server.manager_process import Coalesced, ManagerProcess
from postvakt.server.node import NodeServices, announce_ready, bound_addresses, stop_signal
from postvakt.server.nodelock import lock_queue_dir
from postvakt.server.privileges import drop_privileges
from postvakt.server.process import SHUTDOWN_GRACE
from postvakt.server.services import App

log = logging.getLogger("postvakt.workers")

# Pause before starting a worker again after it died (a worker that dies at
# once must not turn into a busy loop of restarts).
RESPAWN_DELAY = 1.0
# How long the workers may take to open their listeners at start (three or
# more interpreters starting at once on a busy machine).
START_TIMEOUT = 90.0
# The bytes a worker writes to its pipe.
READY = b"R"
WAKE = b"\0"


@dataclass(eq=False)
class Worker:
    index: int
    sockets: dict[tuple[str, str], socket.socket]
    proc: subprocess.Popen[bytes] | None = None
    pipe: int | None = None  # the parent's read end of the worker's pipe
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class Supervisor:
    def __init__(self, config: Config, config_path: Path | None, manager: ManagerProcess) -> None:
        self.config = config
        self.config_path = config_path
        self.manager = manager
        self.workers: list[Worker] = []
        self.stopping = False
        self._loop = asyncio.get_running_loop()
        # Workers read this pipe; the parent never writes it: its EOF tells them the parent is gone.
        self._life_r, self._life_w = os.pipe()
        os.set_inheritable(self._life_w, False)

    def spawn(self, w: Worker) -> None:
        r, wr = os.pipe()
        spec = {
            "index": w.index,
            "notify": wr,
            "life": self._life_r,
            "listen": [[kind, hp, s.fileno()] for (kind, hp), s in w.sockets.items()],
        }
        args = [sys.executable, "-m", "postvakt.server", "--role", "worker"]
        args += ["--worker-spec", json.dumps(spec)]
        if self.config_path is not None:
            args += ["--config", str(self.config_path)]
        fds = (wr, self._life_r, *(s.fileno() for s in w.sockets.values()))
        w.ready = asyncio.Event()
        w.proc = subprocess.Popen(args, pass_fds=fds, stdin=subprocess.DEVNULL)
        os.close(wr)
        os.set_blocking(r, False)
        w.pipe = r
        self._loop.add_reader(r, self._on_pipe, w)
        log.info("worker %d started (pid %d)", w.index, w.proc.pid)

    def _on_pipe(self, w: Worker) -> None:
        if w.pipe is None:
            return
        try:
            data = os.read(w.pipe, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the worker is gone (the watchdog starts another)
            self._loop.remove_reader(w.pipe)
            os.close(w.pipe)
            w.pipe = None
            return
        if READY in data:
            w.ready.set()
        if WAKE in data:
            self.manager.wake()

    async def watch(self) -> None:
        while not self.stopping:
            await asyncio.sleep(0.2)
            for w in self.workers:
                if self.stopping or w.proc is None:
                    continue
                code = w.proc.poll()
                if code is None:
                    continue
                log.error(
                    "worker %d (pid %d) exited with %s; starting another in %g s",
                    w.index,
                    w.proc.pid,
                    _exit_words(code),
                    RESPAWN_DELAY,
                )
                w.proc = None
                await asyncio.sleep(RESPAWN_DELAY)
                if not self.stopping:
                    self.spawn(w)

    def reload(self, path: Path) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.send_signal(signal.SIGHUP)
        log.info("reload: passed to %d workers", len(self.workers))

    async def stop(self) -> None:
        self.stopping = True
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        for w in self.workers:
            proc = w.proc
            if proc is None:
                continue
            try:
                await asyncio.to_thread(proc.wait, SHUTDOWN_GRACE + 5)
            except subprocess.TimeoutExpired:
                log.error("worker %d (pid %d) did not stop in time; killed", w.index, proc.pid)
                proc.kill()
                await asyncio.to_thread(proc.wait)
        for w in self.workers:
            if w.pipe is not None:
                self._loop.remove_reader(w.pipe)
                os.close(w.pipe)
                w.pipe = None
            for s in w.sockets.values():
                s.close()
        os.close(self._life_w)
        os.close(self._life_r)


def _exit_words(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"code {code}"


async def _all_ready(sup: Supervisor, config: Config) -> None:
    """Every worker listening; a worker that exits while starting stops the start."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    while not all(w.ready.is_set() for w in sup.workers):
        for w in sup.workers:
            code = w.proc.poll() if w.proc is not None else None
            if code is not None and not w.ready.is_set():
                raise ConfigError(
                    config.source,
                    "[server] workers",
                    f"worker {w.index} exited with {_exit_words(code)} while starting"
                    " (its log lines say why)",
                )
        if loop.time() > deadline:
            raise ConfigError(
                config.source,
                "[server] workers",
                f"the workers did not start in {START_TIMEOUT:g} s",
            )
        await asyncio.sleep(0.05)


async def supervise(config: Config, config_path: Path | None) -> int:
    """The parent of `[server] workers` front processes; returns the exit status."""
    app = build_app(config)  # checks the config as one process would, and serves the web/reports
    # Held until the process exits, however it exits (the kernel drops it).
    lock_queue_dir(config)
    n = config.server.workers
    try:
        sets = bind_all(config, n)
    except BindError as e:
        raise bind_error(e.kind, e.address, e.error, config.source) from None
    bound = bound_addresses((kind, s) for (kind, _), s in sets[0].items())
    node = NodeServices()
    try:
        await node.start_http(app, bound)
        # Every port is bound: from here on the server user (when started as root),
        # and so are the queue manager and the workers started below.
        drop_privileges(config)
    except BaseException:
        for per in sets:
            for sock in per.values():
                sock.close()
        raise
    manager = ManagerProcess(config, config_path)
    app.manager = manager
    await manager.start()
    sup = Supervisor(config, config_path, manager)
    sup.workers = [Worker(i, socks) for i, socks in enumerate(sets)]
    try:
        for w in sup.workers:
            sup.spawn(w)
        await _all_ready(sup, config)
        watch = asyncio.get_running_loop().create_task(sup.watch())
    except BaseException:
        await sup.stop()
        await manager.stop(5)
        await node.stop()
        raise
    await node.start_reports(app)
    log.info("%d workers serving", n)
    announce_ready(config, bound)

    await stop_signal(_on_hup(app, sup, config_path)).wait()

    notify.stopping()
    log.info("stopping: workers finish their transactions in flight")
    await node.stop()
    await sup.stop()
    watch.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watch
    await manager.stop(SHUTDOWN_GRACE)
    app.close_stores()
    log.info("stopped")
    return 0


def _on_hup(app: App, sup: Supervisor, config_path: Path | None) -> Callable[[], None] | None:
    """SIGHUP in the parent: its own view (web, reports, the queue manager), then every worker."""
    if config_path is None:
        return None
    path = config_path

    def on_hup() -> None:
        reload_config(app, path, [])
        sup.reload(path)

    return on_hup


class Notifier:
    """A worker's line to the parent: ready, and a wake-up after committed mail
    (one per turn of the worker's event loop, however many messages it ended)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        self.wake = Coalesced(lambda: self.send(WAKE))

    def send(self, data: bytes) -> None:
        with contextlib.suppress(BlockingIOError, BrokenPipeError, OSError):
            os.write(self.fd, data)  # a full pipe means a wake-up is pending anyway


async def run_worker(config: Config, config_path: Path | None, spec_text: str) -> int:
    """One front process: serve the sockets handed down until SIGTERM or the parent is gone."""
    spec = json.loads(spec_text)
    index = int(spec["index"])
    # Keyed as the Opener looks them up: (kind, address as configured).
    inherited = {
        (str(kind), str(hp)): socket.socket(fileno=int(fd)) for kind, hp, fd in spec["listen"]
    }
    app = build_app(config)
    app.opener = Opener(lambda: app.config, inherited)
    notifier = Notifier(int(spec["notify"]))
    app.manager = notifier
    descriptors = raise_descriptor_limit()
    app.connections.limit = connection_limit(config.server.max_connections, descriptors)
    await app.start_committer()
    servers = await listen(app)
    loop = asyncio.get_running_loop()
    path = config_path
    stop = stop_signal(None if path is None else lambda: reload_config(app, path, servers))
    life = int(spec["life"])
    os.set_blocking(life, False)

    def parent_gone() -> None:
        try:
            data = os.read(life, 1)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            log.error("worker %d: the parent process is gone; stopping", index)
            loop.remove_reader(life)
            stop.set()

    loop.add_reader(life, parent_gone)
    log.info("worker %d serving (pid %d)", index, os.getpid())
    notifier.send(READY)
    await stop.wait()
    await stop_front(app, servers)
    app.close_stores()
    log.info("worker %d stopped", index)
    return 0
