"""Shared pieces for policy tables: the harness names of the robustness anchors.

L = local domain pv.test, H = hostname mx.pv.test, X = other.example,
[IP] = [127.0.0.1]. Client O (outside) is 127.0.0.2, T (trusted network)
is 127.0.0.1, C (allowed client) is 127.0.0.3, A is logged in on 587.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from postvakt.config import Config, from_dict
from postvakt.policy import Client, Grant

NOW = 1_000_000.0
O_IP = "127.0.0.2"
T_IP = "127.0.0.1"
C_IP = "127.0.0.3"


def make_config(**sections: dict[str, object]) -> Config:
    raw: dict[str, object] = {
        "hostname": "mx.pv.test",
        "domains": {"local": ["pv.test"], "relay": ["backup.test"]},
        "relay": {"networks": ["127.0.0.1/32", "::1/128"], "clients": ["127.0.0.3/32"]},
    }
    for name, values in sections.items():
        merged = dict(raw.get(name, {}))  # type: ignore[call-overload]
        merged.update(values)
        raw[name] = merged
    return from_dict(raw, source="<test>")


@dataclass
class DictDirectory:
    """The policy's narrow view of the directory, held in a dict."""

    users: set[str] = field(
        default_factory=lambda: {"u@pv.test", "alice@pv.test", "bob@pv.test", "weird%name@pv.test"}
    )
    # login -> addresses it may also send as (aliases, send-as grants)
    sendas: dict[str, set[str]] = field(
        default_factory=lambda: {"alice@pv.test": {"sales@pv.test", "alice@backup.test"}}
    )

    def recipient_exists(self, address: str) -> bool:
        a = address.lower()
        return a in self.users or a in {"postmaster", "postmaster@pv.test"}

    def may_send_as(self, login: str, address: str) -> bool:
        lg, a = login.lower(), address.lower()
        return lg == a or a in self.sendas.get(lg, set())


def client(role: str) -> Client:
    """O, T, C, A:<login>, P:<login> (fresh POP3 login), E:<login> (expired grant)."""
    kind, _, login = role.partition(":")
    if kind == "O":
        return Client(ip=O_IP, port="smtp", now=NOW)
    if kind == "T":
        return Client(ip=T_IP, port="smtp", now=NOW)
    if kind == "C":
        return Client(ip=C_IP, port="smtp", now=NOW)
    if kind == "A":
        return Client(ip=O_IP, port="submission", tls=True, login=login, now=NOW)
    if kind == "P":
        return Client(ip=O_IP, port="smtp", grant=Grant(O_IP, login, NOW + 600), now=NOW)
    if kind == "E":
        return Client(ip=O_IP, port="smtp", grant=Grant(O_IP, login, NOW - 60), now=NOW)
    raise ValueError(role)
