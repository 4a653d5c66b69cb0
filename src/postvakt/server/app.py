"""One front process: its services built (`build_app`), its listeners, stop and reload.

The front writes accepted mail into the queue and wakes the manager; it never
delivers. `server/main.py` runs a front (and the node around it: the queue
manager, web, metrics and grant reports, `server/node.py`); with `[server]
workers` each worker process is one front (`server/workers.py`).

SIGTERM stops accepting, lets transactions in flight finish (up to
SHUTDOWN_GRACE) and closes the rest (`stop_front`).

SIGHUP re-reads the config file and applies all of it or none of it: every
section, the TLS certificate and key included, takes effect for connections
made from then on, while sessions in flight finish on the settings they
started with. A change only a restart can apply (config.RESTART_KEYS: bound
addresses, directories, stores, the server user) refuses the whole reload
with one line naming those keys, and the running config stays.

Layering inside server/: main -> workers -> node, manager_process -> app ->
smtp, pop3 -> services (`App`), limits, accept, listeners, ...; nothing below
imports what sits above it (tests/test_purity.py checks that no cycle forms).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import tempfile
from pathlib import Path

from postvakt import config as config_mod
from postvakt.auth import Authenticator
from postvakt.config import Config, ConfigError, HostPort
from postvakt.directory import Directory, DirectoryUnavailable, SchemaError
from postvakt.grants.logins import LoginThrottle
from postvakt.queue import Queue
from postvakt.server import notify
from postvakt.server.accept import Connections
from postvakt.server.handshake import Listening
from postvakt.server.limits import Limiter
from postvakt.server.listeners import Opener
from postvakt.server.pop3 import reload_pop3, start_pop3, stop_pop3
from postvakt.server.privileges import server_identity
from postvakt.server.process import SHUTDOWN_GRACE
from postvakt.server.services import App
from postvakt.server.smtp import SMTPSession
from postvakt.server.tls import ServerContext, reload_context, server_context
from postvakt.store import open_state

log = logging.getLogger("postvakt")


def dkim_key_problems(config: Config) -> tuple[str, ...]:
    """A line per `[dkim] sign` key that cannot be used: `serve` and a reload refuse those."""
    if not config.dkim.sign:
        return ()
    # Here, only with [dkim] sign: the keys are read with dkimpy's and
    # cryptography's modules, 3.2 MB PSS in the front (measured) that a server
    # without signing keys never needs (the queue manager signs, not the front).
    from postvakt.mailauth.signing import Signer

    return Signer.load(config).problems


def check_data_dir(config: Config) -> None:
    """`data_dir` exists (made if missing) and this process may write in it.

    The probe is a file without a name (O_TMPFILE where the file system has
    it, else a unique name removed at once): the processes of `[server]
    workers` check at the same moment, and with one fixed name one of them
    removed the probe another was about to remove ("No such file or
    directory": a start that failed now and then)."""
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=config.data_dir) as probe:
            probe.write(b"\0")
    except OSError as e:
        raise ConfigError(
            config.source,
            "data_dir",
            f"{config.data_dir} is not a usable directory: {e.strerror or e}",
        ) from None


def build_app(config: Config) -> App:
    if not any(
        getattr(config.listen, k) for k in ("smtp", "submission", "submissions", "pop3", "pop3s")
    ):
        raise ConfigError(config.source, "[listen]", "no listener configured: nothing to serve")
    check_data_dir(config)
    dkim_problems = dkim_key_problems(config)
    if dkim_problems:
        raise ConfigError(config.source, "[dkim] sign", "; ".join(dkim_problems))
    try:
        directory = Directory.for_config(config, live=True)
    except (SchemaError, DirectoryUnavailable) as e:
        raise ConfigError(config.source, "[store] directory", str(e)) from None
    needs_tls = bool(
        config.listen.smtp
        or config.listen.submission
        or config.listen.submissions
        or config.listen.pop3
        or config.listen.pop3s
    )
    queue = Queue(config.queue_root)
    ssl_context = server_context(config) if needs_tls else None
    if os.geteuid() == 0 and config.server.drop_privileges:
        server_identity(config)  # a missing server user is an error before any port is bound
    state = open_state(config)
    return App(
        config=config,
        directory=directory,
        authenticator=Authenticator(directory),
        grants=state.grants,
        login_throttle=LoginThrottle.for_limits(state.logins, config.limits),
        queue=queue,
        ssl_context=ssl_context,
        state=state,
        limiter=Limiter(state.counters, queue, notices=state.notices),
        connections=Connections(1 << 30, ipv6_prefix=config.limits.ipv6_prefix),
    )


def bind_error(kind: str, hp: HostPort, err: OSError, source: str) -> ConfigError:
    if err.errno == errno.EADDRINUSE:
        reason = f"{hp} is already in use by another program"
    elif err.errno == errno.EACCES:
        reason = f"{hp}: permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    elif err.errno == errno.EADDRNOTAVAIL:
        reason = f"{hp}: this machine has no such address"
    else:
        reason = f"{hp}: {err.strerror or err}"
    return ConfigError(source, f"[listen] {kind}", reason)


async def listen(app: App) -> list[tuple[str, Listening]]:
    servers: list[tuple[str, Listening]] = []
    cfg = app.config
    opener = app.opener or Opener(lambda: app.config)
    for kind in ("smtp", "submission", "submissions"):
        for hp in getattr(cfg.listen, kind):
            factory = functools.partial(SMTPSession, app, kind)
            try:
                srv: Listening = await opener.open(
                    kind,
                    hp,
                    factory,
                    app.ssl_context,
                    family="smtp",
                    connections=app.connections,
                    client_limit=app.smtp_client_limit,
                    refusal=app.smtp_refusal,
                )
            except OSError as e:
                raise bind_error(kind, hp, e, cfg.source) from None
            servers.append((kind, srv))
    if cfg.listen.pop3 or cfg.listen.pop3s:
        try:
            pop_servers = await start_pop3(
                cfg,
                directory=app.directory,
                authenticator=app.authenticator,
                grants=app.grants,
                login_throttle=app.login_throttle,
                ssl_context=app.ssl_context,
                connections=app.connections,
                opener=opener,
                locks=app.state.locks if app.state is not None else None,
            )
        except OSError as e:
            raise ConfigError(cfg.source, "[listen] pop3", str(e)) from None
        # start_pop3 returns the [listen] pop3 servers first, then the pop3s ones.
        n_plain = len(cfg.listen.pop3)
        for i, srv in enumerate(pop_servers):
            servers.append(("pop3" if i < n_plain else "pop3s", srv))
    return servers


async def stop_front(app: App, servers: list[tuple[str, Listening]]) -> None:
    """Stop accepting, let transactions in flight finish (up to SHUTDOWN_GRACE), close the rest."""
    loop = asyncio.get_running_loop()
    pop_servers = [srv for kind, srv in servers if kind in ("pop3", "pop3s")]
    if pop_servers:
        stop_pop3(pop_servers)  # POP3 sessions end without UPDATE: nothing is deleted
    for _, srv in servers:
        srv.close()
    for s in list(app.sessions):
        s.shutdown()
    deadline = loop.time() + SHUTDOWN_GRACE
    while (app.tasks or any(s.in_transaction for s in app.sessions)) and loop.time() < deadline:
        await asyncio.sleep(0.05)
    for s in list(app.sessions):
        if s.transport is not None:
            s.transport.close()
    if app.committer is not None:
        await app.committer.close()


def reload_config(app: App, path: Path, servers: list[tuple[str, Listening]]) -> None:
    notify.reloading()
    try:
        _apply_reload(app, path, servers)
    finally:
        notify.ready("serving")


def _apply_reload(app: App, path: Path, servers: list[tuple[str, Listening]]) -> None:
    """All of the new config, or none of it (see the module's docstring)."""
    try:
        new = config_mod.load(path)
        restart = config_mod.restart_only_changes(app.config, new)
        if restart:
            raise ConfigError(
                new.source,
                ", ".join(restart),
                "changed; only a restart applies "
                + ("this" if len(restart) == 1 else "these")
                + " (postvakt check, then systemctl restart postvakt)",
            )
        dkim_problems = dkim_key_problems(new)
        if dkim_problems:
            raise ConfigError(new.source, "[dkim] sign", "; ".join(dkim_problems))
        if isinstance(app.ssl_context, ServerContext):
            reload_context(app.ssl_context, new)
    except ConfigError as e:
        log.error("reload refused, keeping the running config: %s", e)
        return
    app.login_throttle.configure(new.limits)
    app.connections.ipv6_prefix = new.limits.ipv6_prefix
    pop_servers = [srv for kind, srv in servers if kind in ("pop3", "pop3s")]
    if pop_servers:
        reload_pop3(pop_servers, new)
    logging.getLogger().setLevel(getattr(logging, new.log_level.upper(), logging.INFO))
    app.config = new
    if app.manager is not None and hasattr(app.manager, "config"):
        app.manager.config = new
    log.info("reloaded %s", path)
