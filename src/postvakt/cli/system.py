"""`postvakt init --system`: the usual places, owners and modes, the user, the unit.

What an admin expects of a package's install step, done by the program:

    /etc/postvakt/                   root:postvakt 0750   (the config holds no secret,
    /etc/postvakt/postvakt.toml      root:postvakt 0640    but says where they are)
    /var/lib/postvakt/               postvakt:postvakt 0750  data_dir: users, grants, keys, mail
    /var/spool/postvakt/             postvakt:postvakt 0750  queue_dir: this node's queue
    /etc/systemd/system/postvakt.service  root:root 0644

The `postvakt` system user and group are created when missing (useradd).
`--root PREFIX` writes all of it under PREFIX instead of / (an image being
built, a test): the config still names the real paths, and the user is added
to PREFIX/etc/passwd and PREFIX/etc/group.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click

from postvakt.config import DEFAULT_SERVER_USER

ETC_DIR = Path("/etc/postvakt")
DATA_DIR = Path("/var/lib/postvakt")
QUEUE_DIR = Path("/var/spool/postvakt")
UNIT_PATH = Path("/etc/systemd/system/postvakt.service")
# The command the shipped unit runs: the venv the README installs into.
SHIPPED_COMMAND = "/opt/postvakt/bin/postvakt"

UNIT_TEMPLATE = """\
# postvakt as a systemd service. `postvakt init --system` installs this file
# (with ExecStart pointing at the postvakt it was run from), creates the
# postvakt user and writes /etc/postvakt, /var/lib/postvakt and
# /var/spool/postvakt with their owners and modes.
#
# The service starts as the postvakt user with only CAP_NET_BIND_SERVICE, so
# it binds 25/465/587/110/995 without ever being root. `systemctl reload`
# sends SIGHUP: every setting and the TLS certificate are re-read, sessions
# in flight finish on the old ones; a change that needs a restart is refused
# and named in the journal. Run `postvakt check` before a reload or restart.
# The TLS key must be readable by the postvakt group (e.g. root:postvakt 0640).

[Unit]
Description=postvakt mail server (SMTP, submission, POP3)
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={command} serve --config /etc/postvakt/postvakt.toml
ExecReload=/bin/kill -HUP $MAINPID
KillSignal=SIGTERM
TimeoutStopSec=30
Restart=on-failure
# Exit status 2 is a configuration error: restarting will not fix it.
RestartPreventExitStatus=2

User=postvakt
Group=postvakt
UMask=0027
AmbientCapabilities=CAP_NET_BIND_SERVICE
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
NoNewPrivileges=true
LimitNOFILE=131072

ProtectSystem=strict
ProtectHome=true
PrivateTmp=true
PrivateDevices=true
ProtectKernelTunables=true
ProtectKernelModules=true
ProtectKernelLogs=true
ProtectControlGroups=true
ProtectHostname=true
ProtectClock=true
ProtectProc=invisible
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
RestrictNamespaces=true
RestrictRealtime=true
RestrictSUIDSGID=true
LockPersonality=true
# MemoryDenyWriteExecute is left out: CPython extension modules (libffi closures) need it off.
SystemCallArchitectures=native
ReadWritePaths=/var/lib/postvakt /var/spool/postvakt
ReadOnlyPaths=/etc/postvakt

[Install]
WantedBy=multi-user.target
"""


def unit_text(command: str = SHIPPED_COMMAND) -> str:
    return UNIT_TEMPLATE.format(command=command)


def this_command() -> str:
    """How the unit should start the postvakt that runs now (a venv's script, or -m)."""
    script = Path(sys.executable).parent / "postvakt"
    if script.exists():
        return str(script)
    return f"{sys.executable} -m postvakt"


def under(root: Path, path: Path) -> Path:
    return root / path.relative_to("/")


@dataclass(frozen=True)
class Account:
    uid: int
    gid: int


def _lookup(root: Path, user: str) -> Account | None:
    """The user's ids as root/etc/passwd says (the machine's own files when root is /)."""
    try:
        lines = under(root, Path("/etc/passwd")).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":")
        if len(parts) >= 4 and parts[0] == user:
            return Account(int(parts[2]), int(parts[3]))
    return None


def ensure_user(root: Path, user: str = DEFAULT_SERVER_USER) -> tuple[Account, bool]:
    """The server user, made (system user, own group, no login, no home) when missing."""
    have = _lookup(root, user)
    if have is not None:
        return have, False
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    args = [useradd, "--system", "--user-group", "--no-create-home"]
    args += ["--home-dir", str(DATA_DIR), "--shell", "/usr/sbin/nologin", user]
    if root != Path("/"):
        under(root, Path("/etc")).mkdir(parents=True, exist_ok=True)
        args[1:1] = ["--prefix", str(root)]
    try:
        r = subprocess.run(args, capture_output=True, text=True)
    except OSError as e:
        raise click.ClickException(f"cannot run useradd to create {user}: {e.strerror}") from None
    made = _lookup(root, user)
    if r.returncode != 0 or made is None:
        raise click.ClickException(
            f"useradd could not create {user}: {(r.stderr or r.stdout).strip() or r.returncode}"
        )
    return made, True


def _place(path: Path, mode: int, owner: Account | None, *, directory: bool) -> None:
    if directory:
        path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    if owner is not None:
        os.chown(path, owner.uid, owner.gid)


@dataclass(frozen=True)
class SystemLayout:
    root: Path
    config: Path
    data_dir: Path
    queue_dir: Path
    unit: Path


def install_system(
    root: Path,
    config_text: str,
    force: bool,
    make_certificate: Callable[[Path], tuple[Path, Path]],
) -> tuple[SystemLayout, Account, bool]:
    """Write the tree under `root`; `make_certificate(data_dir)` makes the self-signed pair."""
    layout = SystemLayout(
        root=root,
        config=under(root, ETC_DIR / "postvakt.toml"),
        data_dir=under(root, DATA_DIR),
        queue_dir=under(root, QUEUE_DIR),
        unit=under(root, UNIT_PATH),
    )
    if layout.config.exists() and not force:
        raise click.ClickException(f"{layout.config} exists already (use --force to overwrite)")
    if os.geteuid() != 0:
        raise click.ClickException("--system sets owners and creates a user: run it as root")
    account, created = ensure_user(root)
    service = account
    admin = Account(0, account.gid)
    _place(layout.config.parent, 0o750, admin, directory=True)
    tmp = layout.config.with_suffix(".tmp")
    tmp.write_text(config_text)
    _place(tmp, 0o640, admin, directory=False)
    tmp.replace(layout.config)
    _place(layout.data_dir, 0o750, service, directory=True)
    _place(layout.queue_dir, 0o750, service, directory=True)
    cert, key = make_certificate(layout.data_dir)
    _place(cert.parent, 0o750, service, directory=False)
    _place(cert, 0o640, service, directory=False)
    _place(key, 0o600, service, directory=False)
    layout.unit.parent.mkdir(parents=True, exist_ok=True)
    layout.unit.write_text(unit_text(this_command()))
    _place(layout.unit, 0o644, Account(0, 0), directory=False)
    return layout, account, created
