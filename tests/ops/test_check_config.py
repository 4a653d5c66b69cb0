"""`postvakt check` names each problem with its file and fix, one line each, and exits
non-zero on an error; `postvakt config` prints what is in force (postconf, postconf -n)."""

from __future__ import annotations

import datetime
import json
import os
import socket
from pathlib import Path

import trustme

from support import base_config, postvakt, to_toml


def _write(tmp_path: Path, **sections: object) -> Path:
    cfg = tmp_path / "postvakt.toml"
    raw = base_config(tmp_path / "data", **sections)  # type: ignore[arg-type]
    raw["listen"] = {"smtp": ["127.0.0.1:0"]}
    cfg.write_text(to_toml(raw))
    return cfg


def _ready(tmp_path: Path, **sections: object) -> Path:
    cfg = _write(tmp_path, **sections)
    postvakt("user", "add", "postmaster@pv.test", "--password-stdin", config=cfg, input="pw\n")
    return cfg


def _check(cfg: Path) -> tuple[int, list[str]]:
    r = postvakt("check", config=cfg, check=False)
    assert "Traceback" not in r.stderr + r.stdout
    return r.returncode, r.stdout.strip().splitlines()


def test_clean_setup_passes(tmp_path: Path) -> None:
    code, lines = _check(_ready(tmp_path))
    assert code == 0, lines
    assert ": ok" in lines[-1], lines
    assert not [x for x in lines if x.startswith("error:")], lines


def test_world_readable_key(tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("mx.pv.test")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.private_key_pem.write_to_path(str(key))
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    os.chmod(key, 0o644)
    code, lines = _check(_ready(tmp_path, tls={"cert": str(cert), "key": str(key)}))
    assert code == 1
    mine = [x for x in lines if str(key) in x]
    assert mine == [f"error: {key}: mode 0644 lets every local user in (fix: chmod 640 {key})"]
    os.chmod(key, 0o640)
    code, lines = _check(tmp_path / "postvakt.toml")
    assert code == 0, lines


def test_missing_data_directory(tmp_path: Path) -> None:
    cfg = _write(tmp_path)
    code, lines = _check(cfg)
    assert code == 1
    data = tmp_path / "data"
    mine = [x for x in lines if x.startswith(f"error: {data}:")]
    assert len(mine) == 1 and "data_dir does not exist" in mine[0] and "mkdir" in mine[0]
    assert not data.exists()  # check changes nothing


def test_expired_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    now = datetime.datetime.now(datetime.UTC)
    leaf = ca.issue_cert(
        "mx.pv.test",
        not_before=now - datetime.timedelta(days=100),
        not_after=now - datetime.timedelta(days=10),
    )
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.private_key_pem.write_to_path(str(key))
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    os.chmod(key, 0o600)
    code, lines = _check(_ready(tmp_path, tls={"cert": str(cert), "key": str(key)}))
    assert code == 1
    mine = [x for x in lines if str(cert) in x]
    expired = (now - datetime.timedelta(days=10)).strftime("%Y-%m-%d")
    assert len(mine) == 1, lines
    assert mine[0].startswith(f"error: {cert}: certificate expired on ")
    assert expired in mine[0] or "expired on" in mine[0]
    assert "renew" in mine[0]


def test_port_held_by_another_program(tmp_path: Path) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        cfg = _ready(tmp_path)
        text = cfg.read_text().replace('smtp = ["127.0.0.1:0"]', f'smtp = ["127.0.0.1:{port}"]')
        cfg.write_text(text)
        code, lines = _check(cfg)
        assert code == 1
        assert [x for x in lines if x.startswith("error: [listen] smtp:")], lines
        # The same address held by this very server (as its listening.json says) is fine.
        (tmp_path / "data" / "listening.json").write_text(
            json.dumps({"smtp": [f"127.0.0.1:{port}"]})
        )
        os.chmod(tmp_path / "data" / "listening.json", 0o640)
        code, lines = _check(cfg)
        assert code == 0, lines
    finally:
        blocker.close()


def test_postmaster_without_mailbox_is_a_warning(tmp_path: Path) -> None:
    cfg = _write(tmp_path)
    postvakt("user", "add", "alice@pv.test", "--password-stdin", config=cfg, input="pw\n")
    code, lines = _check(cfg)
    assert code == 0
    assert any(x.startswith("warning: postmaster:") for x in lines), lines


def test_config_full_non_default_and_json(tmp_path: Path) -> None:
    cfg = _write(tmp_path, pop3={"plaintext": "networks"})
    full = postvakt("config", config=cfg).stdout
    assert 'plaintext = "networks"' in full
    assert "idle_timeout = 600.0" in full  # a default, filled in
    assert f'queue_dir = "{tmp_path / "data" / "queue"}"' in full
    short = postvakt("config", "--non-default", config=cfg).stdout
    assert 'plaintext = "networks"' in short
    assert "idle_timeout" not in short and "max_recipients" not in short
    data = json.loads(postvakt("config", "--json", config=cfg).stdout)
    assert data["pop3"]["plaintext"] == "networks"
    assert data["listen"]["smtp"] == ["127.0.0.1:0"]
    assert data["server"]["user"] == "postvakt"
    only = json.loads(postvakt("config", "--non-default", "--json", config=cfg).stdout)
    assert only["pop3"] == {"plaintext": "networks"}


def test_invalid_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "postvakt.toml"
    cfg.write_text('[relay]\nnetworks = ["10.0.0.0/33"]\n')
    r = postvakt("check", config=cfg, check=False)
    assert r.returncode == 2
    assert r.stdout.strip().splitlines() == [
        f"error: {cfg}: [relay] networks: '10.0.0.0/33' is not a valid IP address or CIDR"
        ' network (e.g. "192.0.2.0/24")'
    ]


def test_full_config_output_loads_back_as_a_config_file(tmp_path: Path) -> None:
    """postconf's output is a main.cf; ours is a postvakt.toml: printed, it loads, and it
    prints the same again (every section, [limits] with its quotas included)."""
    cfg = _write(
        tmp_path,
        limits={"user": {"messages_per_hour": 50, "outcomes": {"messages_per_day": "defer"}}},
        dkim={"sign": {"pv.test": ["s1", "s2"]}},
    )
    first = postvakt("config", config=cfg).stdout
    again = tmp_path / "again.toml"
    again.write_text(first)
    r = postvakt("config", config=again, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout == first
