"""The `postvakt` command."""

from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="postvakt")
def main() -> None:
    """postvakt: a small mail server that is never an open relay."""
