"""Keys `[listen] proxy_protocol`/`proxy_trusted` and `[server] workers`: defaults and errors."""

from __future__ import annotations

import ipaddress

import pytest

from postvakt import config
from postvakt.config import ConfigError


def test_defaults_no_proxy_one_worker() -> None:
    c = config.loads('[listen]\nsmtp = ["127.0.0.1:25"]\n')
    assert c.listen.proxy_protocol == ()
    assert c.listen.proxy_trusted == ()
    assert c.server.workers == 1


def test_proxy_keys_parse() -> None:
    c = config.loads(
        "[listen]\n"
        'smtp = ["127.0.0.11:25"]\n'
        'proxy_protocol = ["smtp", "submission", "smtp"]\n'
        'proxy_trusted = ["127.0.0.10", "2001:db8::/64"]\n'
        "[server]\nworkers = 4\n"
        '[relay]\ngrant_store = "sqlite"\n[limits]\nstore = "sqlite"\n'
    )
    assert c.listen.proxy_protocol == ("smtp", "submission")
    assert c.listen.proxy_trusted == (
        ipaddress.ip_network("127.0.0.10/32"),
        ipaddress.ip_network("2001:db8::/64"),
    )
    assert c.listen.smtp[0].port == 25
    assert c.server.workers == 4


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ('[listen]\nproxy_protocol = ["imap"]', "[listen] proxy_protocol", "not one of"),
        ('[listen]\nproxy_trusted = ["haproxy.example"]', "[listen] proxy_trusted", ""),
        ("[server]\nworkers = 0", "[server] workers", "must be 1 to"),
        ("[server]\nworkers = 1000", "[server] workers", "must be 1 to"),
        ('[server]\nworkers = "2"', "[server] workers", "whole number"),
    ],
)
def test_bad_keys_name_the_key(text: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.loads(text, "site.toml")
    assert key in str(e.value) and reason in str(e.value), str(e.value)


def test_workers_refuse_state_of_one_process() -> None:
    with pytest.raises(ConfigError) as e:
        config.loads('[server]\nworkers = 2\n[store]\nstate = "memory"\n', "site.toml")
    assert '[store] state = "sqlite"' in str(e.value)
    # The default state (SQLite) is shared by every process of the node.
    assert config.loads("[server]\nworkers = 2\n").server.workers == 2
