"""Config: the contract keys load into frozen dataclasses; every error names file, key, reason."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from postvakt import config
from postvakt.config import ConfigError, HostPort

CONTRACT = """
hostname = "mail.example.test"
data_dir = "/var/lib/postvakt"

[listen]
smtp = ["0.0.0.0:25"]
submission = ["0.0.0.0:587"]
submissions = ["0.0.0.0:465"]
pop3 = ["0.0.0.0:110"]
pop3s = ["0.0.0.0:995"]

[tls]
cert = "/etc/postvakt/cert.pem"
key = "/etc/postvakt/key.pem"

[domains]
local = ["example.test"]
relay = []

[relay]
networks = ["127.0.0.0/8", "::1/128"]
clients = []
pop_before_smtp = "30m"

[delivery]
smarthost = ""
routes = { }
"""


def test_design_contract_example_loads() -> None:
    c = config.loads(CONTRACT, "postvakt.toml")
    assert c.hostname == "mail.example.test"
    assert c.data_dir == Path("/var/lib/postvakt")
    assert c.listen.smtp == (HostPort("0.0.0.0", 25),)
    assert c.listen.pop3s == (HostPort("0.0.0.0", 995),)
    assert c.tls.cert == Path("/etc/postvakt/cert.pem")
    assert c.domains.local == ("example.test",)
    assert c.relay.networks == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert c.relay.pop_before_smtp == 1800
    assert c.delivery.smarthost is None and c.delivery.routes == ()


def test_config_is_frozen() -> None:
    c = config.loads(CONTRACT)
    with pytest.raises(AttributeError):
        c.hostname = "x"  # type: ignore[misc]


def test_absent_listener_key_disables_it() -> None:
    c = config.loads('[listen]\nsmtp = ["127.0.0.1:2525"]\n')
    assert c.listen.submission == () and c.listen.pop3 == ()


def test_routes_and_smarthost() -> None:
    c = config.loads(
        '[delivery]\nsmarthost = "relay.example.net"\nroutes = { "Other.Example." = "127.0.0.1:2600" }\n'
    )
    assert c.delivery.smarthost == HostPort("relay.example.net", 25)
    assert c.delivery.route_for("other.example") == HostPort("127.0.0.1", 2600)


def test_domains_are_canonical() -> None:
    c = config.loads('[domains]\nlocal = ["PV.Test."]\n')
    assert c.domains.local == ("pv.test",)


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        (
            '[relay]\nnetworks = ["10.0.0.0/33"]',
            "[relay] networks",
            "not a valid IP address or CIDR",
        ),
        ('[relay]\nnetwork = ["10.0.0.0/8"]', "[relay] network", "unknown key"),
        ('hostnme = "x"', "hostnme", "unknown key"),
        ('[relay]\npop_before_smtp = "soon"', "[relay] pop_before_smtp", "not a duration"),
        ('[listen]\nsmtp = ["127.0.0.1:99999"]', "[listen] smtp", "port must be a number"),
        ('[listen]\nsmtp = ["127.0.0.1"]', "[listen] smtp", "has no port"),
        ('[tls]\ncert = "/x.pem"', "[tls]", "both cert and key"),
        ('[smtp]\nmax_recipients = "many"', "[smtp] max_recipients", "a whole number"),
        ('[domains]\nlocal = ["exa mple.test"]', "[domains] local", "not a valid domain"),
        (
            '[domains]\nlocal = ["a.test"]\nrelay = ["a.test"]',
            "[domains] relay",
            "also a local domain",
        ),
        ("[relay]\nreject_code = 250", "[relay] reject_code", "4xx or 5xx"),
        ('[sender]\nnetworks = "everyone"', "[sender] networks", "not one of"),
        ('[sender]\nclients = "owner"', "[sender] clients", "not one of any, domain"),
        ("hostname = ", "", "not valid TOML"),
    ],
)
def test_bad_config_names_file_key_and_reason(text: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.loads(text, "site.toml")
    msg = str(e.value)
    assert msg.startswith("site.toml: ")
    assert key in msg
    assert reason in msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        config.load(tmp_path / "nope.toml")


def test_relative_data_dir_is_relative_to_the_file(tmp_path: Path) -> None:
    p = tmp_path / "etc" / "postvakt.toml"
    p.parent.mkdir()
    p.write_text('data_dir = "data"\n')
    assert config.load(p).data_dir == tmp_path / "etc" / "data"


def test_embedded_default_matches_design(tmp_path: Path) -> None:
    c = config.embedded_default(tmp_path)
    assert c.data_dir == tmp_path / "postvakt-data"
    assert c.domains.local == ("example.test",)
    ports = {
        k: getattr(c.listen, k)[0].port
        for k in ("smtp", "submission", "submissions", "pop3", "pop3s")
    }
    assert ports == {
        "smtp": 2525,
        "submission": 2587,
        "submissions": 2465,
        "pop3": 2110,
        "pop3s": 2995,
    }


def test_dns_dkim_auth_checks_sections() -> None:
    cfg = config.loads(
        """
        data_dir = "/d"
        [dns]
        servers = ["127.0.0.1:5353", "[::1]", "192.0.2.53"]
        timeout = "3s"
        [dkim]
        sign = { "Example.ORG" = "s2026", "example.net" = ["a1", "a1e"] }
        [auth_checks]
        dmarc_reject = "reject"
        spf_fail = "warn"
        """
    )
    assert cfg.dns.servers == (
        HostPort("127.0.0.1", 5353),
        HostPort("::1", 53),
        HostPort("192.0.2.53", 53),
    )
    assert cfg.dns.timeout == 3.0
    assert cfg.dkim.selectors("example.org") == ("s2026",)
    assert cfg.dkim.selectors("example.net") == ("a1", "a1e")
    assert cfg.dkim_key_dir == Path("/d/dkim")
    assert cfg.auth_checks.dmarc_reject == "reject" and cfg.auth_checks.enabled


def test_auth_checks_are_off_by_default_no_lookups() -> None:
    cfg = config.loads('data_dir = "/d"')
    assert not cfg.auth_checks.enabled and cfg.dns.servers == () and cfg.dkim.sign == ()


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ('[dns]\nservers = ["127.0.0.1:99999"]', "[dns] servers", "port must be a number"),
        ("[dns]\ntimeout = 0", "[dns] timeout", "more than 0"),
        ('[dns]\nresolvers = ["x"]', "[dns] resolvers", "unknown key"),
        ('[dkim]\nsign = "example.org"', "[dkim] sign", "must be a table"),
        (
            '[dkim]\nsign = { "example.org" = [] }',
            "[dkim] sign.example.org",
            "at least one selector",
        ),
        (
            '[dkim]\nsign = { "example.org" = "bad selector" }',
            "[dkim] sign.example.org",
            "not a valid selector",
        ),
        ('[dkim]\nsign = { "example.org" = ["a", "a"] }', "[dkim] sign.example.org", "named twice"),
        (
            '[auth_checks]\ndmarc_reject = "quarantine"',
            "[auth_checks] dmarc_reject",
            "not one of off, warn, reject",
        ),
        ('[auth_checks]\nspf = "warn"', "[auth_checks] spf", "unknown key"),
    ],
)
def test_bad_mailauth_config_names_key_and_reason(text: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.loads(text, source="t.toml")
    assert e.value.key == key and reason in e.value.reason
