"""The certificate covers the names mail programs connect to (issue 18 §5):
`init --names` writes them, the self-signed certificate is made for all of
them, a change of names makes a new one, and an admin's certificate that lacks
one is reported at start."""

from __future__ import annotations

import hashlib
import os
import ssl
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import trustme

from postvakt.config import ConfigError, loads
from postvakt.server.tls import certificate_names, covers
from support import Running, connect_from, postvakt, start_server, write_server_config

NAMES = ["smtp.pv.test", "mail.pv.test", "192.0.2.25"]


def verified(srv: Running, kind: str, name: str) -> bool:
    """Whether a client that trusts exactly our certificate accepts it for `name`."""
    ctx = ssl.create_default_context(cafile=str(srv.data_dir / "tls" / "cert.pem"))
    sock = connect_from("127.0.0.1", srv.port(kind))
    try:
        with ctx.wrap_socket(sock, server_hostname=name) as tls:
            return tls.recv(100).startswith((b"220", b"+OK"))
    except ssl.SSLCertVerificationError:
        return False
    finally:
        sock.close()


def test_init_names_go_into_the_config_and_the_certificate(tmp_path: Path) -> None:
    r = postvakt(
        "init",
        "--dir",
        str(tmp_path / "etc"),
        "--domain",
        "pv.test",
        "--hostname",
        "mx.pv.test",
        "--names",
        "smtp.pv.test, mail.pv.test",
        "--names",
        "192.0.2.25",
    )
    cfg = tomllib.loads((tmp_path / "etc" / "postvakt.toml").read_text())
    assert cfg["tls"]["names"] == ["mx.pv.test", *NAMES]
    pem = (tmp_path / "etc" / "data" / "tls" / "cert.pem").read_bytes()
    have = certificate_names(pem)
    assert all(covers(have, n) for n in ["mx.pv.test", *NAMES, "localhost", "127.0.0.1"])
    der = ssl.PEM_cert_to_DER_cert(pem.decode())
    fp = ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
    assert f"SHA-256 fingerprint {fp}" in r.stdout
    assert "give this file to your users' mail programs" in r.stdout


def test_init_without_names_on_no_terminal_takes_the_host_name(tmp_path: Path) -> None:
    postvakt("init", "--dir", str(tmp_path), "--domain", "proseware.example", input="")
    cfg = tomllib.loads((tmp_path / "postvakt.toml").read_text())
    assert cfg["tls"]["names"] == ["mail.proseware.example"]


def test_init_on_a_terminal_asks_for_the_names(tmp_path: Path) -> None:
    """Run by a person (stdin a terminal) without --names, init asks for them."""
    leader, follower = os.openpty()
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "postvakt",
                "init",
                "--dir",
                str(tmp_path),
                "--domain",
                "pv.test",
            ],
            stdin=follower,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.write(leader, b"smtp.pv.test, pop.pv.test\n")
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(follower)
        os.close(leader)
    assert proc.returncode == 0, err
    assert "Host names your users' mail programs will connect to" in out
    cfg = tomllib.loads((tmp_path / "postvakt.toml").read_text())
    assert cfg["tls"]["names"] == ["mail.pv.test", "smtp.pv.test", "pop.pv.test"]
    have = certificate_names((tmp_path / "data" / "tls" / "cert.pem").read_bytes())
    assert all(covers(have, n) for n in cfg["tls"]["names"])


def test_init_refuses_a_name_that_is_not_one(tmp_path: Path) -> None:
    r = postvakt(
        "init", "--dir", str(tmp_path), "--domain", "pv.test", "--names", "bad_name!", check=False
    )
    assert r.returncode == 2 and "--names" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "postvakt.toml").exists()


def test_clients_verify_the_self_signed_certificate_by_every_name(tmp_path: Path) -> None:
    srv = start_server(tmp_path, tls={"names": NAMES})
    try:
        for name in ("smtp.pv.test", "mail.pv.test", "mx.pv.test"):
            assert verified(srv, "submissions", name), name
            assert verified(srv, "pop3s", name), name
        assert not verified(srv, "submissions", "other.pv.test")
    finally:
        srv.stop()


def test_a_new_name_makes_a_new_certificate(tmp_path: Path) -> None:
    srv = start_server(tmp_path, tls={"names": ["smtp.pv.test"]})
    try:
        first = (srv.data_dir / "tls" / "cert.pem").read_bytes()
        srv.restart()
        assert (srv.data_dir / "tls" / "cert.pem").read_bytes() == first  # kept while it fits
        srv.stop()
        write_server_config(tmp_path, tls={"names": ["smtp.pv.test", "pop.pv.test"]})
        srv.start()
        assert (srv.data_dir / "tls" / "cert.pem").read_bytes() != first
        assert "does not cover pop.pv.test: making a new one" in srv.log()
        assert verified(srv, "pop3s", "pop.pv.test")
    finally:
        srv.stop()


def test_an_admin_certificate_lacking_a_name_is_reported(tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("smtp.pv.test")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    srv = start_server(
        tmp_path, tls={"cert": str(cert), "key": str(key), "names": ["smtp.pv.test", "pop.pv.test"]}
    )
    try:
        log = srv.log()
        assert "[tls] names: pop.pv.test is not covered by" in log
        assert "smtp.pv.test is not covered" not in log
    finally:
        srv.stop()


@pytest.mark.parametrize("bad", ['["has space.example"]', '["-x.example"]', "[1]"])
def test_config_refuses_bad_names(bad: str) -> None:
    with pytest.raises(ConfigError) as e:
        loads(f"[tls]\nnames = {bad}\n", source="t.toml")
    assert e.value.key == "[tls] names"
