"""`postvakt user`, `user sendas` and `alias`: the user directory."""

from __future__ import annotations

import click

from postvakt.cli.common import config_option, load_config, read_password
from postvakt.directory import Directory


def _directory(config_path: str | None) -> Directory:
    return Directory.for_config(load_config(config_path))


@click.group()
def user() -> None:
    """Manage users (mailboxes with a password)."""


@user.command("add")
@click.argument("address")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@config_option
def user_add(address: str, password_stdin: bool, config_path: str | None) -> None:
    d = _directory(config_path)
    a = d.add_user(address, read_password(password_stdin))
    click.echo(f"added {a}")


@user.command("del")
@click.argument("address")
@config_option
def user_del(address: str, config_path: str | None) -> None:
    d = _directory(config_path)
    d.delete_user(address)
    click.echo(f"deleted {address} (the mailbox files are kept)")


@user.command("list")
@config_option
def user_list(config_path: str | None) -> None:
    for u in _directory(config_path).users():
        click.echo(u)


@user.command("passwd")
@click.argument("address")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@config_option
def user_passwd(address: str, password_stdin: bool, config_path: str | None) -> None:
    d = _directory(config_path)
    if not d.user_exists(address):
        raise click.ClickException(f"{address}: no such user")
    d.set_password(address, read_password(password_stdin))
    click.echo(f"changed the password of {address}")


@user.group("sendas")
def user_sendas() -> None:
    """Addresses a user may send as, beyond their own and their personal aliases."""


@user_sendas.command("add")
@click.argument("login")
@click.argument("address")
@config_option
def sendas_add(login: str, address: str, config_path: str | None) -> None:
    _directory(config_path).add_sendas(login, address)
    click.echo(f"{login} may now send as {address}")


@user_sendas.command("del")
@click.argument("login")
@click.argument("address")
@config_option
def sendas_del(login: str, address: str, config_path: str | None) -> None:
    _directory(config_path).delete_sendas(login, address)
    click.echo(f"{login} may no longer send as {address}")


@user_sendas.command("list")
@click.argument("login")
@config_option
def sendas_list(login: str, config_path: str | None) -> None:
    for a in _directory(config_path).sendas(login):
        click.echo(a)


@click.group()
def alias() -> None:
    """Manage aliases (an address that delivers to one or more others)."""


@alias.command("add")
@click.argument("alias_address")
@click.argument("target")
@config_option
def alias_add(alias_address: str, target: str, config_path: str | None) -> None:
    _directory(config_path).add_alias(alias_address, target)
    click.echo(f"{alias_address} -> {target}")


@alias.command("del")
@click.argument("alias_address")
@click.argument("target", required=False)
@config_option
def alias_del(alias_address: str, target: str | None, config_path: str | None) -> None:
    _directory(config_path).delete_alias(alias_address, target)
    click.echo(f"deleted {alias_address}" + (f" -> {target}" if target else ""))


@alias.command("list")
@config_option
def alias_list(config_path: str | None) -> None:
    for a, t in _directory(config_path).aliases():
        click.echo(f"{a} -> {t}")
