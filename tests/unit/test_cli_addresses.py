"""`postvakt user add`, `alias add` and `user sendas add` judge an address with
SMTP's own parser (issue 16 point 12): what the directory stores, a client can
reach; what SMTP refuses, the CLI refuses with a line naming the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import LOCAL_DOMAIN, postvakt, write_server_config


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path, _ = write_server_config(tmp_path)
    return path


BAD = [
    (f"a:b@{LOCAL_DOMAIN}", "bad local part: ':' is not allowed in it unquoted"),
    ("x" * 300 + f"@{LOCAL_DOMAIN}", "it is 308 octets long; SMTP takes at most 254"),
    (f"a..b@{LOCAL_DOMAIN}", "bad local part: a dot at its start or end, or two dots in a row"),
    (f"a@b@{LOCAL_DOMAIN}", "more than one @ in address"),
    (f"@relay.example:a@{LOCAL_DOMAIN}", "a source route (@host:) is not part of a mailbox name"),
    ("postmaster", "it has no domain"),
    ("a@[127.0.0.1]", "an address literal"),
]


@pytest.mark.parametrize(("address", "problem"), BAD)
def test_user_add_refuses_what_smtp_refuses(config: Path, address: str, problem: str) -> None:
    r = postvakt(
        "user", "add", address, "--password-stdin", config=config, input="pw\n", check=False
    )
    assert r.returncode == 1, r
    assert r.stderr.startswith("postvakt: "), r.stderr
    assert "is not an address SMTP accepts" in r.stderr and problem in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    listed = postvakt("user", "list", config=config)
    assert listed.stdout == ""


@pytest.mark.parametrize(("address", "problem"), BAD[:2])
def test_alias_and_sendas_refuse_them_too(config: Path, address: str, problem: str) -> None:
    good = f"alice@{LOCAL_DOMAIN}"
    postvakt("user", "add", good, "--password-stdin", config=config, input="pw\n")
    for args in (
        ("alias", "add", address, good),
        ("alias", "add", f"team@{LOCAL_DOMAIN}", address),
        ("user", "sendas", "add", good, address),
    ):
        r = postvakt(*args, config=config, check=False)
        assert r.returncode == 1, (args, r)
        assert problem in r.stderr, (args, r.stderr)


def test_a_good_address_is_still_added(config: Path) -> None:
    r = postvakt(
        "user",
        "add",
        f"Bob.Smith+tag@{LOCAL_DOMAIN.upper()}.",
        "--password-stdin",
        config=config,
        input="pw\n",
    )
    assert r.stdout.strip() == f"added bob.smith+tag@{LOCAL_DOMAIN}"
