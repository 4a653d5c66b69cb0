"""`postvakt check` (is this machine ready to serve?) and `postvakt config` (what is in force)."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
import sys
from pathlib import Path
from typing import Any

import click

from postvakt import config as config_mod
from postvakt.cli.common import config_option, resolve_config
from postvakt.config import Config, ConfigError, HostPort
from postvakt.server.check import run_checks


@click.command()
@config_option
@click.option("--quiet", is_flag=True, help="Print nothing when all is well.")
def check(config_path: str | None, quiet: bool) -> None:
    """Check the config, files, certificate, ports and postmaster; exit 1 on an error."""
    try:
        cfg, path = resolve_config(config_path, warn=False)
    except ConfigError as e:
        click.echo(f"error: {e}", err=False)
        sys.exit(2)
    findings = run_checks(cfg)
    for f in findings:
        click.echo(f.line())
    errors = sum(f.severity == "error" for f in findings)
    if errors:
        sys.exit(1)
    if not quiet:
        warnings = len(findings)
        click.echo(
            f"{path or cfg.source}: ok"
            + (f", {warnings} warning{'s' if warnings != 1 else ''}" if warnings else "")
        )


@click.command("config")
@config_option
@click.option(
    "--non-default", "non_default", is_flag=True, help="Only what differs from the defaults."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def config_cmd(config_path: str | None, non_default: bool, as_json: bool) -> None:
    """Print the configuration in force (every default filled in), like postconf."""
    cfg, path = resolve_config(config_path, warn=False)
    if non_default:
        # As written, before defaults are filled in: a default data_dir is not "set".
        base_dir = path.resolve().parent if path is not None else Path.cwd()
        data = _difference(_plain(cfg), _plain(config_mod.from_dict({}, base_dir=base_dir)))
        for name in NOT_IN_FILE:
            data.pop(name, None)
    else:
        data = effective(cfg)
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=False))
    else:
        click.echo(to_toml(data), nl=False)


# Config fields that record where the file came from and what loading it said, not settings.
NOT_IN_FILE = frozenset({"source", "notes"})


def effective(cfg: Config) -> dict[str, Any]:
    """The config as plain TOML-like values: keys as the file spells them, defaults filled in."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        if f.name in NOT_IN_FILE:
            continue
        value = getattr(cfg, f.name)
        if f.name == "mail_dir":
            value = cfg.mail_root
        elif f.name == "queue_dir":
            value = cfg.queue_root
        out[f.name] = _field(f.name, value)
    dkim = out.get("dkim")
    if isinstance(dkim, dict) and dkim.get("key_dir") is None:
        dkim["key_dir"] = str(cfg.dkim_key_dir)
    if out.get("postmaster") == "":
        out["postmaster"] = cfg.postmaster_address
    return out


# Keys whose value is a table of names, even when empty.
MAPPING_KEYS = frozenset({"routes", "sign", "users", "outcomes"})


def _field(name: str, v: Any) -> Any:
    if name in MAPPING_KEYS and v == ():
        return {}
    return _plain(v)


def _as_declared(f: dataclasses.Field[Any], v: Any) -> Any:
    # A float default written as an int (30 * 60) prints as the file would load it: 1800.0.
    return float(v) if f.type in ("float", float) and type(v) is int else v


def _plain(v: Any) -> Any:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        if isinstance(v, HostPort):
            return str(v)
        return {
            f.name: _field(f.name, _as_declared(f, getattr(v, f.name)))
            for f in dataclasses.fields(v)
        }
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(v)
    if isinstance(v, tuple | list):
        if v and all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) for x in v):
            return {k: _plain(x) for k, x in v}
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


def _difference(data: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        b = base.get(k)
        if isinstance(v, dict) and isinstance(b, dict) and v and _is_table(v):
            sub = _difference(v, b)
            if sub:
                out[k] = sub
        elif v != b:
            out[k] = v
    return out


def _is_table(v: dict[str, Any]) -> bool:
    """A section (keys of a dataclass), not a value that is a mapping (routes, sign)."""
    return any(isinstance(x, dict) for x in v.values()) or not all("." in k or "@" in k for k in v)


def _toml_value(v: Any) -> str:
    if v is None:
        return '""'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    return json.dumps(str(v))


def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def to_toml(data: dict[str, Any], prefix: str = "") -> str:
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    for k, v in data.items():
        if v is None:
            continue  # not set, and no default stands in for it
        if isinstance(v, dict) and _is_table(v):
            tables.append((k, v))
        else:
            lines.append(f"{_key(k)} = {_toml_value(v)}")
    text = "\n".join(lines) + ("\n" if lines else "")
    for k, v in tables:
        name = f"{prefix}.{_key(k)}" if prefix else _key(k)
        text += f"\n[{name}]\n" + to_toml(v, name)
    return text
