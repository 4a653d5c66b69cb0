"""`postvakt store`: the directory's schema and moving it between engines."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from postvakt.cli.common import config_option, load_config
from postvakt.config import Config
from postvakt.directory.rows import Rows, SqliteRows

if TYPE_CHECKING:
    from postvakt.directory.postgres import PostgresRows


@click.group()
def store() -> None:
    """Where users and shared state live ([store] in the config)."""


def _is_postgres(where: str) -> bool:
    return where.startswith(("postgresql://", "postgres://"))


@store.command("migrate")
@config_option
def migrate_cmd(config_path: str | None) -> None:
    """Bring the directory's schema up to this version's (safe to run on every node)."""
    cfg = load_config(config_path)
    if cfg.store.directory_kind == "postgresql":
        pg = _postgres()
        before, after = pg.migrate(cfg.store.directory, cfg.store.timeout)
        rows = pg.PostgresRows(cfg.store.directory, timeout=cfg.store.timeout, live=False)
        where = rows.where
        rows.close()
        if before == after:
            click.echo(f"directory {where}: schema version {after}, up to date")
        else:
            click.echo(f"directory {where}: schema version {before} -> {after}")
    else:
        path = cfg.data_dir / "directory.sqlite3"
        sq = SqliteRows(path)
        version = sq.schema_version
        sq.close()
        click.echo(f"directory sqlite {path}: schema version {version}, up to date")
    click.echo(
        f"state {cfg.store.state}: no schema to migrate (its keys and tables make themselves)"
    )


def _postgres() -> Any:
    """postvakt.directory.postgres, imported when used: psycopg costs every command 0.1 s."""
    from postvakt.directory import postgres

    return postgres


def _open(cfg: Config, where: str, *, target: bool) -> tuple[Rows, str]:
    if where == "sqlite":
        path = cfg.data_dir / "directory.sqlite3"
        if not target and not path.exists():
            raise click.ClickException(f"--from sqlite: {path} does not exist")
        return SqliteRows(path), f"sqlite {path}"
    if _is_postgres(where):
        pg = _postgres()
        if target:
            pg.migrate(where, cfg.store.timeout)
        rows: PostgresRows = pg.PostgresRows(where, timeout=cfg.store.timeout, live=False)
        return rows, rows.where
    raise click.ClickException(f"{where!r} is neither sqlite nor a postgresql:// URL")


@store.command("copy")
@config_option
@click.option("--from", "source", required=True, metavar="sqlite|URL")
@click.option("--to", "target", required=True, metavar="URL|sqlite")
def copy_cmd(config_path: str | None, source: str, target: str) -> None:
    """Copy users (with their password hashes), aliases and send-as rights into an empty directory."""
    cfg = load_config(config_path)
    if source == target:
        raise click.ClickException("--from and --to name the same directory")
    src, src_name = _open(cfg, source, target=False)
    dst, dst_name = _open(cfg, target, target=True)
    try:
        users = [(u, src.password_hash(u) or "") for u in src.users()]
        aliases = src.aliases()
        sendas = [(u, a) for u, _ in users for a in src.sendas(u)]
        load = getattr(dst, "load", None)  # PostgreSQL: all in one transaction
        if load is not None:
            try:
                load(users, aliases, sendas)
            except ValueError as e:
                raise click.ClickException(f"{e}: copy only into an empty directory") from None
        else:
            if dst.users():
                raise click.ClickException(
                    f"{dst_name} holds users already: copy only into an empty directory"
                )
            for u, h in users:
                dst.add_user(u, h)
            for a, t in aliases:
                dst.add_alias(a, t)
            for lg, a in sendas:
                dst.add_sendas(lg, a)
    finally:
        src.close()
        dst.close()
    click.echo(
        f"copied {len(users)} users, {len(aliases)} aliases and {len(sendas)} send-as rights"
        f" from {src_name} to {dst_name}"
    )
    click.echo(f'now set [store] directory = "{target}" on every node')
