"""What every `postvakt` command shares: finding the config, reading a password.

Every command that needs a config takes `--config FILE`; without it, the
file `./postvakt.toml` is used if present, else the embedded default (the same
one `postvakt serve` runs), so the quick start works without any file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from postvakt import config as config_mod
from postvakt.config import Config, ConfigError
from postvakt.permissions import loose_modes

DEFAULT_CONFIG_NAME = "postvakt.toml"


def resolve_config(path: str | None, *, warn: bool = True) -> tuple[Config, Path | None]:
    """The config to use, and its file (None for the embedded default).

    Also warns, once per run, about private files others may read (see
    postvakt.permissions); `warn=False` for a process whose parent did so.
    """
    if path:
        p: Path | None = Path(path)
        cfg = config_mod.load(Path(path))
    else:
        local = Path.cwd() / DEFAULT_CONFIG_NAME
        p = local if local.exists() else None
        cfg = config_mod.load(local) if p is not None else config_mod.embedded_default()
    if warn:
        warn_loose_modes(cfg)
    return cfg, p


_warned: set[Path] = set()


def warn_loose_modes(cfg: Config) -> None:
    """One stderr line per private file or directory that others may use; once per run."""
    if cfg.data_dir in _warned:
        return
    _warned.add(cfg.data_dir)
    for finding in loose_modes(cfg):
        click.echo(f"postvakt: warning: {finding.line()}", err=True)


def load_config(path: str | None) -> Config:
    try:
        config = resolve_config(path)[0]
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    for note in config.notes:
        click.echo(f"postvakt: warning: {note}", err=True)
    return config


config_option = click.option(
    "--config",
    "config_path",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="Config file (default: ./postvakt.toml, else the embedded default).",
)

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def read_password(password_stdin: bool) -> str:
    """The password from the first line of stdin, or asked twice on a terminal; never an argument."""
    if password_stdin:
        line = sys.stdin.readline()
        pw = line.rstrip("\r\n")
        if not pw:
            raise click.ClickException("no password on standard input")
        return pw
    if not sys.stdin.isatty():
        raise click.ClickException("no terminal to ask for a password: use --password-stdin")
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))
