"""`postvakt dovecot config DIR`: Dovecot beside postvakt, for IMAP (docs/imap.md)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from postvakt.cli.common import config_option, load_config
from postvakt.config import Config, HostPort, parse_hostport
from postvakt.dovecot import (
    DEFAULT_BASE_DIR,
    DEFAULT_PORTS,
    DovecotSetup,
    DovecotSetupError,
    ListenerKind,
    Listeners,
    SqliteDirectory,
    default_listeners,
    directory_source,
    setup_for,
    write,
)
from postvakt.server.tls import ensure_self_signed, self_signed_paths

OFF = "off"


def _listeners(config: Config, kind: ListenerKind, given: tuple[str, ...]) -> tuple[HostPort, ...]:
    """The addresses for one kind: as given, `off`, or the default (IMAP only)."""
    if OFF in given:
        if len(given) > 1:
            raise click.UsageError(f"--{kind} {OFF} cannot be combined with addresses")
        return ()
    if given:
        return tuple(
            parse_hostport(v, f"--{kind}", f"--{kind}", default_port=DEFAULT_PORTS[kind])
            for v in given
        )
    if kind in ("pop3", "pop3s"):
        return ()  # postvakt serves POP3; Dovecot's only when asked
    return default_listeners(config, kind)


def _certificate(config: Config) -> tuple[Path, Path]:
    """postvakt's certificate: the configured one, or the self-signed one in data_dir."""
    if config.tls.cert is not None and config.tls.key is not None:
        for path, name in ((config.tls.cert, "cert"), (config.tls.key, "key")):
            if not path.is_file():
                raise click.ClickException(f"[tls] {name}: {path}: no such file")
        return config.tls.cert, config.tls.key
    if not config.data_dir.is_dir():
        raise click.ClickException(
            f"data_dir {config.data_dir} does not exist yet: run `postvakt init` or start "
            "postvakt once, then write the Dovecot config"
        )
    made = not all(p.exists() for p in self_signed_paths(config))
    cert, key = ensure_self_signed(config)
    if made and os.geteuid() == 0:
        # Made by root for a server that runs as data_dir's owner: theirs.
        st = config.data_dir.stat()
        for p in (cert.parent, cert, key):
            os.chown(p, st.st_uid, st.st_gid)
    return cert, key


def _ownership_notes(config: Config, setup: DovecotSetup) -> list[str]:
    """Files Dovecot's processes (running as [server] user) would not be able to use."""
    notes = []
    src = directory_source(config)
    paths = [config.data_dir, setup.mail_dir]
    if isinstance(src, SqliteDirectory):
        paths.append(src.path)
    for p in paths:
        try:
            owner = p.stat().st_uid
        except OSError:
            continue
        if owner != setup.uid:
            notes.append(
                f"note: {p} does not belong to {setup.user}, whom Dovecot runs as: "
                f"chown -R {setup.user}:{setup.group} {p}"
            )
    return notes


@click.group()
def dovecot() -> None:
    """Dovecot beside postvakt: IMAP on the same users, mailboxes and certificate."""


@dovecot.command("config")
@click.argument("out_dir", metavar="DIR", type=click.Path(file_okay=False))
@config_option
@click.option(
    "--imap",
    multiple=True,
    metavar="HOST:PORT",
    help="IMAP with STARTTLS (default: port 143 on the addresses postvakt listens on; "
    "'off': none). Repeatable.",
)
@click.option(
    "--imaps",
    multiple=True,
    metavar="HOST:PORT",
    help="IMAP with implicit TLS (default: port 993 on the addresses postvakt listens on; "
    "'off': none). Repeatable.",
)
@click.option(
    "--pop3",
    multiple=True,
    metavar="HOST:PORT",
    help="Let Dovecot serve POP3 too, with STLS (default: off, postvakt serves POP3).",
)
@click.option(
    "--pop3s",
    multiple=True,
    metavar="HOST:PORT",
    help="Let Dovecot serve POP3 with implicit TLS (default: off).",
)
@click.option(
    "--base-dir",
    default=str(DEFAULT_BASE_DIR),
    show_default=True,
    type=click.Path(file_okay=False),
    help="Dovecot's runtime directory; another one lets this Dovecot run beside an existing one.",
)
def dovecot_config(
    out_dir: str,
    config_path: str | None,
    imap: tuple[str, ...],
    imaps: tuple[str, ...],
    pop3: tuple[str, ...],
    pop3s: tuple[str, ...],
    base_dir: str,
) -> None:
    """Write DIR/dovecot.conf: Dovecot serving IMAP from postvakt's users and Maildirs."""
    cfg = load_config(config_path)
    listeners = Listeners(
        imap=_listeners(cfg, "imap", imap),
        imaps=_listeners(cfg, "imaps", imaps),
        pop3=_listeners(cfg, "pop3", pop3),
        pop3s=_listeners(cfg, "pop3s", pop3s),
    )
    if not (listeners.imap or listeners.imaps):
        raise click.ClickException(
            "no IMAP listener: postvakt listens on no address to copy; give --imap or --imaps"
        )
    cert, key = _certificate(cfg)
    try:
        setup = setup_for(
            cfg,
            Path(out_dir),
            cert=cert,
            key=key,
            listeners=listeners,
            base_dir=Path(base_dir).absolute(),
        )
        written = write(setup)
    except DovecotSetupError as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"{out_dir}: cannot write: {e.strerror or e}") from None
    for p in written:
        click.echo(f"wrote {p}")
    for note in _ownership_notes(cfg, setup):
        click.echo(note)
    click.echo(f"start: dovecot -c {written[0]}   (check: doveconf -c {written[0]} -n)")
