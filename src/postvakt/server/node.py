"""The node around the mail listeners: web, metrics, grant reports, signals, the ready marker.

A node is one machine's postvakt: one front process (`server/main.py`) or a
parent with several (`server/workers.py`). Either way the process that owns
the node starts and stops these the same way, here:

- `start_http` before the privilege drop (the web and metrics ports may be
  below 1024), `start_reports` after it (the socket belongs to the server
  user), `stop` first when SIGTERM comes, before the front stops;
- `bound_addresses` says which addresses the listeners really bound;
  `announce_ready` writes the readiness marker last, after every start-up line;
- `stop_signal` is the event SIGTERM and SIGINT set (SIGHUP calls a reload).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from postvakt import metrics
from postvakt.config import Config, ConfigError
from postvakt.grants.report import socket_path
from postvakt.server import notify
from postvakt.server.grantreport import (
    GrantReports,
    allowed_uids,
    start_grant_reports,
    stop_grant_reports,
)
from postvakt.server.services import App

if TYPE_CHECKING:
    from postvakt.server.metrics import MetricsServer
    from postvakt.web.app import WebServer

log = logging.getLogger("postvakt")


@dataclass(eq=False)
class NodeServices:
    """What a node serves beside mail; each part None until started (or when not configured)."""

    web: WebServer | None = None
    metrics: MetricsServer | None = None
    reports: asyncio.AbstractServer | None = None
    report_path: Path | None = None

    async def start_http(self, app: App, bound: dict[str, list[str]]) -> None:
        """Web and metrics, told the ports the mail listeners really bound (added to `bound`)."""
        self.web = await _start_web(app, bound)
        self.metrics = await _start_metrics(app, bound)

    async def start_reports(self, app: App) -> None:
        """Dovecot's post-login script reports IMAP logins here (docs/imap.md)."""
        config = app.config
        self.report_path = socket_path(config)
        self.reports = await start_grant_reports(
            self.report_path,
            GrantReports(
                config=lambda: app.config,
                grants=app.grants,
                user_exists=app.directory.user_exists,
                allowed=allowed_uids(config),
            ),
            config,
        )

    async def stop(self) -> None:
        if self.web is not None:
            await self.web.stop()
        if self.metrics is not None:
            await self.metrics.stop()
        if self.report_path is not None:
            stop_grant_reports(self.reports, self.report_path)


async def _start_web(app: App, bound: dict[str, list[str]]) -> WebServer | None:
    """postvakt.web on this loop, told the ports the mail listeners really bound."""
    cfg = app.config
    if not cfg.web.listen:
        return None
    # Here, where [web] listen says the node serves it: aiohttp and the pages
    # cost the front 11.8 MB PSS on top of its other modules (measured), which
    # a node without [web] or [metrics] never needs.
    from postvakt.web.app import WebDeps, start_web

    ports = {kind: int(addrs[0].rsplit(":", 1)[1]) for kind, addrs in bound.items()}
    if "submission" not in ports and "submissions" not in ports:
        log.warning("web: no [listen] submission or submissions: no mail settings are offered")
    deps = WebDeps(config=lambda: app.config, ports=ports, grants=app.grants)
    try:
        web = await start_web(deps, cfg.web.listen, cfg.web.request_timeout)
    except OSError as e:
        where = ", ".join(map(str, cfg.web.listen))
        raise ConfigError(cfg.source, "[web] listen", f"{where}: {e.strerror or e}") from None
    bound["web"] = web.addresses
    return web


async def _start_metrics(app: App, bound: dict[str, list[str]]) -> MetricsServer | None:
    """The Prometheus endpoint on this loop; it reports the node's totals."""
    cfg = app.config
    if cfg.metrics.listen is None:
        return None
    # Here, where [metrics] listen says the node serves it: the endpoint's
    # aiohttp and prometheus_client cost the front 10.9 MB PSS (measured).
    from postvakt.server.metrics import Levels, start_metrics

    levels = Levels(queue_root=app.queue.root, grants=lambda: app.grants)
    try:
        srv = await start_metrics(cfg.metrics.listen, metrics.metrics_dir(cfg.data_dir), levels)
    except OSError as e:
        raise ConfigError(
            cfg.source, "[metrics] listen", f"{cfg.metrics.listen}: {e.strerror or e}"
        ) from None
    bound["metrics"] = srv.addresses
    return srv


def bound_addresses(sockets: Iterable[tuple[str, socket.socket]]) -> dict[str, list[str]]:
    """kind -> the addresses its sockets really bound ("[::1]:2525"), for the log and the marker."""
    out: dict[str, list[str]] = {}
    for kind, s in sockets:
        name = s.getsockname()
        host = f"[{name[0]}]" if s.family == socket.AF_INET6 else name[0]
        out.setdefault(kind, []).append(f"{host}:{name[1]}")
    return out


def announce_ready(config: Config, bound: dict[str, list[str]]) -> None:
    for kind, addrs in bound.items():
        log.info("listening %s on %s", kind, ", ".join(addrs))
    log.info("event loop %s", type(asyncio.get_running_loop()).__module__.split(".")[0])
    # The readiness marker comes last, whole (rename), after every start-up line.
    ready = config.data_dir / "listening.json"
    ready.with_suffix(".tmp").write_text(json.dumps(bound))
    ready.with_suffix(".tmp").replace(ready)
    print(
        "postvakt: ready; " + "; ".join(f"{k} {', '.join(v)}" for k, v in bound.items()), flush=True
    )
    notify.ready("serving " + ", ".join(bound))


def stop_signal(on_hup: Callable[[], None] | None) -> asyncio.Event:
    """The event SIGTERM and SIGINT set; SIGHUP calls `on_hup` (None: SIGHUP is left alone)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if on_hup is not None:
        loop.add_signal_handler(signal.SIGHUP, on_hup)
    return stop
