"""Root only long enough to bind: then the server runs as `[server] user`/`group`.

`serve` started as root opens its files and binds its ports (25, 465, 587,
110, 995 need root or CAP_NET_BIND_SERVICE), hands the files it keeps
writing to the server user, and drops to that user for good: supplementary
groups cleared, group first, then user, and a check that root cannot be
regained. Everything started after the drop (the queue manager, the
workers) inherits it. Started as any other user (high ports, or a unit that
grants CAP_NET_BIND_SERVICE), nothing changes.

Call `drop_privileges` once per process, after the last bind and before
serving the first connection.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from postvakt.config import Config, ConfigError

log = logging.getLogger("postvakt")

# How deep under mail_dir the hand-over looks: mail_dir/domain/user/{cur,new,tmp}.
# The messages themselves are written by the manager, as the server user already;
# walking every message of a large mail store at each start would be slow.
MAIL_DEPTH = 3


@dataclass(frozen=True)
class ServerIdentity:
    user: str
    group: str
    uid: int
    gid: int


def server_identity(config: Config) -> ServerIdentity:
    """The uid and gid of `[server] user`/`group`; a ConfigError naming the fix if missing."""
    user, group = config.server.user, config.server.group
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        raise ConfigError(
            config.source,
            "[server] user",
            f"no user {user!r} on this machine to run as after binding the ports"
            f" (create it: useradd --system --user-group --no-create-home"
            f" --shell /usr/sbin/nologin {user}; or `postvakt init --system`)",
        ) from None
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(
            config.source,
            "[server] group",
            f"no group {group!r} on this machine (create it: groupadd --system {group})",
        ) from None
    if uid == 0:
        raise ConfigError(config.source, "[server] user", f"{user!r} is root: name another user")
    return ServerIdentity(user, group, uid, gid)


def _walk(root: Path, depth: int | None) -> Iterator[Path]:
    yield root
    if depth == 0 or not root.is_dir() or root.is_symlink():
        return
    try:
        entries = list(root.iterdir())
    except OSError:
        return
    for p in entries:
        if p.is_symlink():
            continue
        if p.is_dir():
            yield from _walk(p, None if depth is None else depth - 1)
        else:
            yield p


def owned_paths(config: Config) -> Iterator[Path]:
    """What the server keeps writing: the data directory, the queue, the Maildirs' tree, keys."""
    mail = config.mail_root
    for root in (config.data_dir, config.queue_root):
        if not root.exists():
            continue
        for p in _walk(root, None):
            if p == mail or mail in p.parents:
                continue
            yield p
    if mail.exists():
        yield from _walk(mail, MAIL_DEPTH)
    if config.dkim_key_dir.exists():
        yield from _walk(config.dkim_key_dir, 1)


def hand_over_files(config: Config, ident: ServerIdentity) -> int:
    """Give the server user what it must write (as root, before the drop); how many changed."""
    changed = 0
    for p in owned_paths(config):
        try:
            st = p.lstat()
            if st.st_uid != ident.uid or st.st_gid != ident.gid:
                os.lchown(p, ident.uid, ident.gid)
                changed += 1
        except OSError as e:
            log.warning("cannot give %s to %s: %s", p, ident.user, e.strerror or e)
    return changed


def drop_privileges(config: Config) -> ServerIdentity | None:
    """As root: hand over the files, then become the server user for good. Else: nothing.

    Returns who the process now runs as, or None when it was not root.
    """
    if os.geteuid() != 0:
        return None
    if not config.server.drop_privileges:
        log.warning(
            "running as root: [server] drop_privileges = false (set it to true to run as %s)",
            config.server.user,
        )
        return None
    ident = server_identity(config)
    changed = hand_over_files(config, ident)
    if changed:
        log.info("gave %d files and directories to %s:%s", changed, ident.user, ident.group)
    os.setgroups([])
    os.setgid(ident.gid)
    os.setuid(ident.uid)
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:  # pragma: no cover - a kernel that lets us back would make the drop a lie
        raise RuntimeError("root privileges could be regained after dropping them")
    os.environ["USER"] = os.environ["LOGNAME"] = ident.user
    log.info("running as %s:%s (uid %d, gid %d)", ident.user, ident.group, ident.uid, ident.gid)
    return ident
