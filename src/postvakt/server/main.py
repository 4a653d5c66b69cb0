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

This module sits on top of server/ with `server/__main__.py`, which starts
the processes the front starts (queue manager, workers); nothing else in
server/ imports either.
"""

from __future__ import annotations

import logging
from pathlib import Path

from postvakt.config import Config
from postvakt.server import notify
from postvakt.server.accept import connection_limit, raise_descriptor_limit
from postvakt.server.app import build_app, listen, reload_config, stop_front
from postvakt.server.manager_process import ManagerProcess
from postvakt.server.node import NodeServices, announce_ready, bound_addresses, stop_signal
from postvakt.server.nodelock import lock_queue_dir
from postvakt.server.privileges import drop_privileges
from postvakt.server.process import SHUTDOWN_GRACE, run_process
from postvakt.server.workers import supervise

log = logging.getLogger("postvakt")


def serve(config: Config, config_path: Path | None) -> int:
    """The front: the listeners, and the processes it starts (the queue manager,
    with `[server] workers` the front workers: `python -m postvakt.server`)."""
    return run_process(config, lambda: run(config, config_path))


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
    await app.start_committer()
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
    app.close_stores()
    log.info("stopped")
    return 0
