"""`postvakt explain --helo --message`: the SPF/DKIM/DMARC steps, with the
same rule names as config and log, looked up in the real test DNS."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from mailauth_support import require_nsd
from zones import OUTSIDE, OutsideKeys, all_zones, message

from dnsserver import NsdServer
from support import LOCAL_DOMAIN, base_config, postvakt, to_toml

BOB = f"bob@{LOCAL_DOMAIN}"


@pytest.fixture(scope="module")
def keys() -> OutsideKeys:
    return OutsideKeys.make(list(OUTSIDE))


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, keys: OutsideKeys
) -> Iterator[tuple[Path, Path]]:
    require_nsd()
    tmp = tmp_path_factory.mktemp("explain")
    nsd = NsdServer(tmp / "dns", all_zones(keys))
    cfg = tmp / "postvakt.toml"
    cfg.write_text(
        to_toml(
            base_config(
                tmp / "data",
                dns={"servers": [nsd.server], "timeout": "5s"},
                auth_checks={"spf_fail": "warn", "dmarc_reject": "reject"},
            )
        )
    )
    postvakt("user", "add", BOB, "--password-stdin", config=cfg, input="pw\n")
    yield cfg, tmp
    nsd.cleanup()


def explain(cfg: Path, *args: str) -> tuple[int, str]:
    r = postvakt("explain", *args, config=cfg, check=False)
    assert r.returncode in (0, 1), r.stderr
    return r.returncode, r.stdout


def test_dmarc_reject_shown_with_its_reply(setup: tuple[Path, Path]) -> None:
    cfg, tmp = setup
    msg = tmp / "unsigned.eml"
    msg.write_bytes(message("a@reject.example", BOB, "x"))
    code, out = explain(
        cfg,
        "--client", "127.0.0.2", "--from", "a@reject.example", "--to", BOB,
        "--helo", "mail.pass.example", "--message", str(msg),
    )  # fmt: skip
    assert code == 1
    assert "end of DATA, authentication (SPF, DKIM, DMARC)" in out
    assert "spf_fail" in out and "warn" in out and "SPF fail for a@reject.example" in out
    assert "dmarc_reject" in out and "DMARC fail for From: reject.example (p=reject" in out
    assert "=> REJECT by dmarc_reject" in out
    assert "S: 550 5.7.1 Message rejected: reject.example asks receivers to reject" in out
    assert "note: the message would get: Authentication-Results: mx.pv.test; spf=fail" in out


def test_signed_message_passes(setup: tuple[Path, Path], keys: OutsideKeys) -> None:
    cfg, tmp = setup
    msg = tmp / "signed.eml"
    msg.write_bytes(keys.sign(message("a@reject.example", BOB, "y"), "reject.example"))
    code, out = explain(
        cfg,
        "--client", "127.0.0.2", "--from", "a@reject.example", "--to", BOB,
        "--helo", "mail.pass.example", "--message", str(msg), "--json",
    )  # fmt: skip
    assert code == 0
    data = json.loads(out)
    [auth] = [c for c in data["checks"] if c["command"].startswith("end of DATA, authentication")]
    assert [(s["rule"], s["result"]) for s in auth["trace"]] == [
        ("spf_fail", "warn"),
        ("dmarc_reject", "permit"),
    ]
    assert any("dkim=pass (" in n and "header.d=reject.example" in n for n in data["notes"])


def test_spf_only_without_message(setup: tuple[Path, Path]) -> None:
    cfg, _ = setup
    code, out = explain(
        cfg, "--client", "127.0.0.2", "--from", "a@pass.example", "--to", BOB,
        "--helo", "mail.pass.example",
    )  # fmt: skip
    assert code == 0
    assert "SPF pass for a@pass.example" in out
    assert "no --message: DKIM and DMARC need the message" in out


def test_not_checked_for_our_own_clients(setup: tuple[Path, Path]) -> None:
    cfg, _ = setup
    code, out = explain(
        cfg, "--client", "127.0.0.1", "--from", "a@fail.example", "--to", BOB,
        "--helo", "x.example",
    )  # fmt: skip
    assert "auth_checks" in out and "the client came by permit_networks" in out
