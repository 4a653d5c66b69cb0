"""`postvakt dkim keygen|show`: signing keys and the DNS records that publish them."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import click

from postvakt.cli.common import config_option, load_config
from postvakt.config import ALGORITHMS, Config, ConfigError, is_selector, normalize_domain
from postvakt.server.privileges import server_identity

# The signing tools (dkimpy, PyNaCl) and the DNS client (dnspython) are imported by the
# commands below when they run: every postvakt process registers these commands, and
# `postvakt serve` would otherwise keep ~100 modules and ~3 MB it never uses (measured).


def _domain(text: str) -> str:
    try:
        return normalize_domain(text, "command line", "DOMAIN")
    except ConfigError as e:
        raise click.UsageError(e.reason) from None


def _selector(text: str) -> str:
    """--selector as a key file name and a DNS label may hold it (RFC 6376 §3.1)."""
    if not is_selector(text):
        raise click.UsageError(
            f"{text!r} is not a valid selector (letters, digits, '-', and '.' between labels)"
        )
    return text.lower()


def _give_to_server_user(config: Config, path: Path) -> None:
    """Run as root, the key (and its directory) go to the user the server runs as:
    `[server] user` when the server drops to it, else whoever owns the data directory."""
    if os.geteuid() != 0:
        return
    owner: tuple[int, int] | None = None
    if config.server.drop_privileges:
        try:
            ident = server_identity(config)
        except ConfigError:
            pass  # no such user yet: `serve` refuses to start and names the fix
        else:
            owner = (ident.uid, ident.gid)
    if owner is None:
        try:
            st = os.stat(config.data_dir)
        except OSError:
            return
        owner = (st.st_uid, st.st_gid)
    os.chown(path, *owner)
    os.chown(path.parent, *owner)


@click.group("dkim")
def dkim() -> None:
    """DKIM signing keys ([dkim] sign) and the records to publish in DNS."""


@dkim.command("keygen")
@config_option
@click.argument("domain")
@click.option(
    "--selector",
    metavar="S",
    default=None,
    help="Selector (default: the first one [dkim] sign names for DOMAIN that has no key yet).",
)
@click.option(
    "--algorithm",
    type=click.Choice(list(ALGORITHMS)),
    default="rsa",
    show_default=True,
    help="rsa (2048 bits) or ed25519 (RFC 8463; as a second signature beside RSA).",
)
def keygen(config_path: str | None, domain: str, selector: str | None, algorithm: str) -> None:
    """Make a signing key for DOMAIN and print the TXT record to publish.

    The key is written to [dkim] key_dir (default data_dir/dkim) as
    DOMAIN.SELECTOR.key, mode 0600 (run as root: owned by the user the
    server runs as); an existing key is never overwritten.
    """
    from postvakt.mailauth.signing import generate_pem, key_from_pem, key_path, write_key, zone_line

    config = load_config(config_path)
    domain = _domain(domain)
    if selector is not None:
        selector = _selector(selector)
    else:
        free = [
            s for s in config.dkim.selectors(domain) if not key_path(config, domain, s).exists()
        ]
        if not config.dkim.selectors(domain):
            raise click.UsageError(f"{domain} is not in [dkim] sign: name a --selector")
        if not free:
            raise click.UsageError(
                f"every selector [dkim] sign names for {domain} has a key: name a new --selector"
            )
        selector = free[0]
    path = key_path(config, domain, selector)
    if path.exists():
        raise click.ClickException(f"{path} exists; a key in use is never overwritten")
    pem = generate_pem("rsa" if algorithm == "rsa" else "ed25519")
    key = key_from_pem(pem, domain, selector, str(path))
    try:
        write_key(path, pem)
        _give_to_server_user(config, path)
    except OSError as e:
        raise click.ClickException(f"cannot write {path}: {e.strerror or e}") from None
    click.echo(f"wrote {path} ({key.algorithm}); publish this record:", err=True)
    click.echo(zone_line(domain, selector, key.record))
    if selector not in config.dkim.selectors(domain):
        click.echo(
            f'note: [dkim] sign does not name {selector} for {domain}: add it to sign with this key ({domain} = "{selector}")',
            err=True,
        )


async def _published(config: Config, name: str) -> tuple[list[str], str]:
    """The key records at `name`, or what is wrong: "MISSING: ..." or "UNKNOWN: ..."."""
    from postvakt.dnsclient import DNSError, client_for

    try:
        records = await client_for(config.dns).txt(name)
    except DNSError as e:
        if e.notfound:
            return [], f"MISSING: {name} does not exist in DNS"
        return [], f"UNKNOWN: DNS lookup of {name} failed ({e}); try again"
    keys = [r for r in records if "p=" in r.replace(" ", "")]
    if not keys:
        return [], f"MISSING: {name} has no DKIM key record"
    return keys, ""


@dkim.command("show")
@config_option
@click.argument("domain")
@click.option("--selector", metavar="S", default=None, help="Only this selector.")
@click.option(
    "--check", is_flag=True, help="Ask DNS ([dns]) whether it publishes the record unchanged."
)
def show(config_path: str | None, domain: str, selector: str | None, check: bool) -> None:
    """Print the record to publish for each selector of DOMAIN; with --check, compare with DNS.

    Exit code 0 when every key is there (and, with --check, published unchanged), else 1.
    """
    from postvakt.mailauth.signing import DKIMKeyError, load_key, record_tags, same_key, zone_line

    config = load_config(config_path)
    domain = _domain(domain)
    selectors = (_selector(selector),) if selector is not None else config.dkim.selectors(domain)
    if not selectors:
        raise click.UsageError(f"{domain} is not in [dkim] sign: name a --selector")
    ok = True
    for sel in selectors:
        try:
            key = load_key(config, domain, sel)
        except DKIMKeyError as e:
            click.echo(f"{sel}: {e}")
            ok = False
            continue
        click.echo(zone_line(domain, sel, key.record))
        if not check:
            continue
        name = f"{sel}._domainkey.{domain}"
        found, problem = asyncio.run(_published(config, name))
        if problem:
            click.echo(f"  check: {problem}")
            ok = False
        elif any(same_key(r, key.record) for r in found):
            click.echo(f"  check: ok: {name} publishes this key")
        else:
            theirs = record_tags(found[0]).get("p", "")
            click.echo(
                f"  check: DIFFERS: {name} publishes another key (p={theirs[:24]}...):"
                " mail signed with this one fails DKIM"
            )
            ok = False
    raise SystemExit(0 if ok else 1)
