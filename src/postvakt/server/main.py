"""`postvakt serve`: build the parts, open the listeners, run until SIGTERM.

One process holds the listeners, the queue manager and the shared state; with
`[server] workers = N` a parent holds them for N front processes instead
(`server/workers.py`). The queue manager runs in a process of its own
(`manager_process`), so that delivery never competes with the front. SIGTERM
stops the node's web, metrics and grant reports (`node`), stops accepting and
lets transactions in flight finish (`app.stop_front`), stops the manager
(deliveries finish or are safely left for the next start), and exits. SIGHUP
reloads (`app.reload_config`).

Started as root, the front binds its ports and then drops to `[server]
user` (server/privileges.py) before it starts the queue manager or serves a
connection. Under systemd (Type=notify) it reports readiness, reloads and
stopping (server/notify.py).

This module sits on top of server/: it picks the role a process plays (front,
worker, queue manager) and nothing else in server/ imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from postvakt import metrics
from postvakt.config import Config, ConfigError
from postvakt.permissions import set_umask
from postvakt.server import notify
from postvakt.server.accept import connection_limit, raise_descriptor_limit
from postvakt.server.app import (
    SHUTDOWN_GRACE,
    build_app,
    listen,
    reload_config,
    setup_logging,
    stop_front,
)
from postvakt.server.manager_process import ManagerProcess, run_queue_manager
from postvakt.server.node import NodeServices, announce_ready, bound_addresses, stop_signal
from postvakt.server.nodelock import lock_queue_dir
from postvakt.server.privileges import drop_privileges
from postvakt.server.workers import run_worker, supervise

log = logging.getLogger("postvakt")

# Which event loop runs the server: "uvloop" (the default when installed) or
# "asyncio"; for telling a loop's bug from ours, and for tests of both.
EVENT_LOOP_ENV = "POSTVAKT_EVENT_LOOP"


def serve(
    config: Config,
    config_path: Path | None,
    *,
    wake_fd: int | None = None,
    worker_spec: str | None = None,
) -> int:
    """The front (listeners); with `wake_fd`, the queue manager process it started;
    with `worker_spec`, one of several front processes (`postvakt.server.workers`)."""
    set_umask()
    setup_logging(config.log_level, config.log.format, with_pid=config.server.workers > 1)
    if config.metrics.listen is not None:
        # The front starts the node's counts afresh; the processes it starts add to them.
        metrics.enable(metrics.metrics_dir(config.data_dir))
    runner = _event_loop_runner(os.environ.get(EVENT_LOOP_ENV, ""))
    if wake_fd is not None:
        main = run_queue_manager(config, config_path, wake_fd)
    elif worker_spec is not None:
        main = run_worker(config, config_path, worker_spec)
    else:
        main = run(config, config_path)
    with contextlib.suppress(KeyboardInterrupt):
        return int(runner(main))
    return 0


async def run(config: Config, config_path: Path | None) -> int:
    for note in config.notes:
        log.warning("%s", note)
    if config.server.workers > 1:
        return await supervise(config, config_path)
    return await _run_single(config, config_path)


async def _run_single(config: Config, config_path: Path | None) -> int:
    app = build_app(config)
    # Held until the process exits, however it exits (the kernel drops it).
    lock_queue_dir(config)
    descriptors = raise_descriptor_limit()
    app.connections.limit = connection_limit(config.server.max_connections, descriptors)
    log.info(
        "descriptor limit %d; at most %d connections at once", descriptors, app.connections.limit
    )
    manager = app.manager = ManagerProcess(config, config_path)
    servers = await listen(app)
    node = NodeServices()
    try:
        bound = bound_addresses((kind, s) for kind, srv in servers for s in srv.sockets)
        await node.start_http(app, bound)
        # Every port is bound: from here on the server user (when started as root).
        drop_privileges(config)
    except BaseException:
        for _, srv in servers:
            srv.close()
        raise
    await manager.start()
    app.start_committer()
    await node.start_reports(app)
    announce_ready(config, bound)

    path = config_path
    hup = None if path is None else lambda: reload_config(app, path, servers)
    await stop_signal(hup).wait()

    notify.stopping()
    log.info("stopping: no new connections, finishing transactions in flight")
    await node.stop()
    await stop_front(app, servers)
    await manager.stop(SHUTDOWN_GRACE)
    app.directory.close()
    if app.state is not None:
        app.state.close()
    log.info("stopped")
    return 0


def _event_loop_runner(choice: str) -> Callable[[Coroutine[Any, Any, int]], int]:
    if choice not in ("", "uvloop", "asyncio"):
        raise ConfigError(
            EVENT_LOOP_ENV, EVENT_LOOP_ENV, f"{choice!r} is not one of uvloop, asyncio"
        )
    if choice != "asyncio":
        try:
            # Here, not at the top: uvloop is optional (not on every platform),
            # and which loop runs is the environment's choice, made at start.
            import uvloop

            return uvloop.run
        except ImportError:
            if choice == "uvloop":
                raise ConfigError(
                    EVENT_LOOP_ENV, EVENT_LOOP_ENV, "uvloop is not installed"
                ) from None
    return asyncio.run
