"""`explain` and `doctor` with IPv6 addresses: networks and clients given as
IPv6 ranges, a client typed as "2001:db8::7", "[2001:db8::7]" or
"IPv6:2001:db8::7", and the doctor probing a server that listens on [::1]."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import Running, base_config, postvakt, to_toml


@pytest.fixture
def cfg_path(tmp_path: Path) -> Path:
    p = tmp_path / "postvakt.toml"
    cfg = base_config(
        tmp_path / "data",
        relay={"networks": ["127.0.0.1/32", "2001:db8:1::/48"], "clients": ["2001:db8:9::5"]},
    )
    p.write_text(to_toml(cfg))
    return p


def explain(cfg_path: Path, client: str) -> tuple[int, str]:
    r = postvakt(
        "explain",
        "--client",
        client,
        "--from",
        "a@elsewhere.example",
        "--to",
        "b@far.example",
        config=cfg_path,
        check=False,
    )
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, r.stdout + r.stderr


@pytest.mark.parametrize(
    ("client", "rule", "shown"),
    [
        ("2001:db8:1::7", "permit_networks", "2001:db8:1::7"),
        ("2001:DB8:1:0:0:0:0:7", "permit_networks", "2001:db8:1::7"),
        ("[2001:db8:9::5]", "permit_clients", "2001:db8:9::5"),
        ("IPv6:2001:db8:9::5", "permit_clients", "2001:db8:9::5"),
        ("::ffff:127.0.0.1", "permit_networks", "127.0.0.1"),
    ],
)
def test_explain_ipv6_client_on_a_road(cfg_path: Path, client: str, rule: str, shown: str) -> None:
    code, out = explain(cfg_path, client)
    assert code == 0, out
    assert f"client {shown} on port smtp" in out
    assert f"=> PERMIT by {rule}" in out
    assert "result: accepted" in out


def test_explain_ipv6_outsider_is_refused_with_the_reason(cfg_path: Path) -> None:
    code, out = explain(cfg_path, "2001:db8:2::7")
    assert code == 1, out
    assert "client 2001:db8:2::7 is not in networks 127.0.0.1/32, 2001:db8:1::/48" in out
    assert "550 5.7.1 <b@far.example>: Relaying denied" in out


def test_explain_names_a_bad_address(cfg_path: Path) -> None:
    code, out = explain(cfg_path, "[2001:db8::zz]")
    assert code != 0
    assert "--client: '[2001:db8::zz]' is not an IP address" in out


def test_doctor_against_a_server_on_ipv6_loopback(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    cfg_path = tmp_path / "postvakt.toml"
    # Only [::1], and networks leave ::1 out: the doctor's probe is an outsider.
    cfg = base_config(data_dir, listen=None)
    cfg["listen"] = {"smtp": ["[::1]:0"]}
    cfg_path.write_text(to_toml(cfg))
    srv = Running(cfg_path, data_dir).start()
    try:
        port = srv.port_on("smtp", "::1")
        r = postvakt(
            "doctor",
            "--server",
            f"[::1]:{port}",
            "--ports",
            "",
            "--from",
            "a@elsewhere.example",
            "--to",
            "b@far.example",
            check=False,
        )
    finally:
        srv.stop()
    out = r.stdout + r.stderr
    assert "Traceback" not in out, out
    assert "relay_denied_no_auth" in out, out
    assert f"You are sending through [::1]:{port} without logging in" in out
    assert "550 5.7.1 <b@far.example>: Relaying denied" in out
