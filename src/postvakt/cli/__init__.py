"""The `postvakt` command: one group, one module per command family.

Errors are one line naming the problem, exit code 2 for bad config or usage,
1 for a refused operation; never a traceback. Nothing below this package
imports it (tests/test_purity.py checks).
"""

from __future__ import annotations

import sys
from typing import Any

import click

from postvakt.cli.check import check, config_cmd
from postvakt.cli.diagnose import doctor, relaytest
from postvakt.cli.dkim import dkim
from postvakt.cli.dovecot import dovecot
from postvakt.cli.explain import explain
from postvakt.cli.grants import grants
from postvakt.cli.init import init
from postvakt.cli.limits import limits
from postvakt.cli.queue import queue
from postvakt.cli.serve import serve
from postvakt.cli.store import store
from postvakt.cli.users import alias, user
from postvakt.config import ConfigError
from postvakt.directory import DirectoryError, DirectoryUnavailable, SchemaError
from postvakt.permissions import set_umask


class _Group(click.Group):
    """Turns config and directory errors into one-line messages with the exit codes above."""

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


for _command in (
    serve,
    init,
    user,
    alias,
    grants,
    store,
    queue,
    explain,
    limits,
    doctor,
    relaytest,
    dkim,
    dovecot,
    check,
    config_cmd,
):
    main.add_command(_command)
