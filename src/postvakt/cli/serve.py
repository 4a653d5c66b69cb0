"""`postvakt serve`: the front; it starts the queue manager (`python -m postvakt.server`)."""

from __future__ import annotations

import sys

import click

from postvakt.cli.common import DEFAULT_CONFIG_NAME, config_option, resolve_config
from postvakt.config import Config
from postvakt.server.main import serve as run_serve


@click.command()
@config_option
def serve(config_path: str | None) -> None:
    """Run every configured listener until SIGTERM (SIGHUP reloads the config)."""
    cfg, path = resolve_config(config_path)
    if path is None:
        _print_default_banner(cfg)
    sys.exit(run_serve(cfg, path))


def _print_default_banner(cfg: Config) -> None:
    domain = cfg.domains.local[0]
    sub = cfg.listen.submission[0]
    smtp = cfg.listen.smtp[0]
    click.echo(
        f"postvakt: no --config and no ./{DEFAULT_CONFIG_NAME}: running the embedded default.\n"
        f"  data in {cfg.data_dir}, local domain {domain}, host name {cfg.hostname}\n"
        f"  smtp {smtp}, submission {sub}, submissions {cfg.listen.submissions[0]},"
        f" pop3 {cfg.listen.pop3[0]}, pop3s {cfg.listen.pop3s[0]}\n"
        f"  add a user (in another terminal, same directory):\n"
        f"    postvakt user add alice@{domain}\n"
        f"  send yourself a test mail, logged in on the submission port:\n"
        f"    swaks --server {sub.host} --port {sub.port} --tls --auth-user alice@{domain}"
        f" --auth-password PASSWORD --from alice@{domain} --to alice@{domain}\n"
        f"  ask why a message would be relayed or refused:\n"
        f"    postvakt explain --client 192.0.2.7 --from alice@{domain} --to friend@other.example\n"
        f"  write a config of your own: postvakt init --dir DIR --domain YOUR.DOMAIN",
        err=False,
    )
