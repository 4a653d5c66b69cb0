"""`[limits] ipv6_prefix`: how much of an IPv6 address is one client, for the
outbound limits and for failed logins (a /64 by default, RFC 6177)."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from postvakt import config
from postvakt.config import ConfigError
from postvakt.grants.logins import LoginThrottle, MemoryLoginFailureStore, Outcome
from postvakt.policy import Client
from postvakt.policy.limits import LimitsConfig, client_key, subject_for

CLIENTS = (ipaddress.ip_network("2001:db8:5::/48"), ipaddress.ip_network("192.0.2.0/24"))


@pytest.mark.parametrize(
    ("ip", "prefix", "key"),
    [
        ("2001:db8:5:1:aaaa::1", 64, "2001:db8:5:1::/64"),
        ("2001:db8:5:1:bbbb::2", 64, "2001:db8:5:1::/64"),
        ("2001:db8:5:1:bbbb::2", 56, "2001:db8:5::/56"),
        ("2001:db8:5:1:bbbb::2", 128, "2001:db8:5:1:bbbb::2"),
        ("::ffff:192.0.2.7", 64, "192.0.2.7"),
        ("192.0.2.7", 64, "192.0.2.7"),
        ("fe80::1%eth0", 64, "fe80::/64"),
    ],
)
def test_client_key(ip: str, prefix: int, key: str) -> None:
    assert client_key(ip, prefix) == key


def test_two_addresses_of_one_64_share_the_limits() -> None:
    limits = LimitsConfig(exempt=())
    a = subject_for(Client(ip="2001:db8:5:1::a"), limits, (), CLIENTS)
    b = subject_for(Client(ip="2001:db8:5:1::b"), limits, (), CLIENTS)
    other = subject_for(Client(ip="2001:db8:5:2::a"), limits, (), CLIENTS)
    assert a is not None and b is not None and other is not None
    assert a.counter_key == b.counter_key == "address:2001:db8:5:1::/64"
    assert other.counter_key != a.counter_key
    per_address = LimitsConfig(exempt=(), ipv6_prefix=128)
    a1 = subject_for(Client(ip="2001:db8:5:1::a"), per_address, (), CLIENTS)
    b1 = subject_for(Client(ip="2001:db8:5:1::b"), per_address, (), CLIENTS)
    assert a1 is not None and b1 is not None and a1.counter_key != b1.counter_key


def test_failed_logins_count_by_the_configured_prefix() -> None:
    async def failures(prefix: int) -> int:
        t = LoginThrottle.for_limits(
            MemoryLoginFailureStore(), LimitsConfig(ipv6_prefix=prefix, auth_delay=0)
        )
        for host in ("a", "b", "c"):
            r = await t.reserve(f"2001:db8:5:1::{host}", f"user{host}@pv.test", 1.0)
            await t.settle(r, Outcome.FAILED, "wrong", 1.0)
        return t.failures("2001:db8:5:1::d", 2.0)

    assert asyncio.run(failures(64)) == 3  # one client: the whole /64
    assert asyncio.run(failures(128)) == 0  # each address on its own


def test_reload_takes_a_new_prefix() -> None:
    t = LoginThrottle.for_limits(MemoryLoginFailureStore(), LimitsConfig())
    t.configure(LimitsConfig(ipv6_prefix=48))
    assert t.ipv6_prefix == 48


def test_config_key() -> None:
    assert config.loads("").limits.ipv6_prefix == 64
    assert config.loads("[limits]\nipv6_prefix = 56\n").limits.ipv6_prefix == 56
    for bad in ("0", "129", '"64"', "true"):
        with pytest.raises(ConfigError) as e:
            config.loads(f"[limits]\nipv6_prefix = {bad}\n", source="t.toml")
        assert e.value.key == "[limits] ipv6_prefix"
        assert "prefix length from 1 to 128" in str(e.value)
