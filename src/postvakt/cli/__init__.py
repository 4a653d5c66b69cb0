"""The `postvakt` command: one group, one module per command family.

Errors are one line naming the problem, exit code 2 for bad config or usage,
1 for a refused operation; never a traceback. Nothing below this package
imports it (tests/test_purity.py checks).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from postvakt.config import ConfigError
from postvakt.directory import DirectoryError, DirectoryUnavailable, SchemaError
from postvakt.permissions import set_umask

# Each command's module, imported when the command is named: `postvakt serve`
# (every server process) then carries none of the other commands' code, such
# as `check`'s certificate parser (cryptography) or the doctor's client.
COMMANDS = {
    "serve": ("postvakt.cli.serve", "serve"),
    "init": ("postvakt.cli.init", "init"),
    "user": ("postvakt.cli.users", "user"),
    "alias": ("postvakt.cli.users", "alias"),
    "grants": ("postvakt.cli.grants", "grants"),
    "store": ("postvakt.cli.store", "store"),
    "queue": ("postvakt.cli.queue", "queue"),
    "explain": ("postvakt.cli.explain", "explain"),
    "limits": ("postvakt.cli.limits", "limits"),
    "doctor": ("postvakt.cli.diagnose", "doctor"),
    "relaytest": ("postvakt.cli.diagnose", "relaytest"),
    "dkim": ("postvakt.cli.dkim", "dkim"),
    "dovecot": ("postvakt.cli.dovecot", "dovecot"),
    "check": ("postvakt.cli.check", "check"),
    "config": ("postvakt.cli.check", "config_cmd"),
}


class _Group(click.Group):
    """The commands of `COMMANDS`, loaded when named; turns config and directory
    errors into one-line messages with the exit codes above."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        where = COMMANDS.get(cmd_name)
        if where is None:
            return None
        module, name = where
        command: click.Command = getattr(importlib.import_module(module), name)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as e:
            click.echo(f"postvakt: {e}", err=True)
            sys.exit(2)
        except (DirectoryError, DirectoryUnavailable, SchemaError) as e:
            click.echo(f"postvakt: {e}", err=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.version_option(package_name="postvakt")
def main() -> None:
    """postvakt: a small mail server that is never an open relay."""
    # Before any command makes a file: user database, keys, grants are private from birth.
    set_umask()
