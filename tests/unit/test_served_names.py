"""The names of the certificate the server serves, read without `cryptography`
(server/tls.py `served_names`): the same as `certificate_names`, which reads
them with it, for every shape of certificate the server meets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from postvakt.server.tls import certificate_names, make_self_signed, served_names
from support import start_server


@pytest.mark.parametrize(
    "names",
    [
        ("mail.example.net",),
        ("mail.example.net", "smtp.example.net", "localhost", "127.0.0.1", "::1"),
        ("*.example.net", "2001:db8::25", "192.0.2.25"),
    ],
)
def test_served_names_read_what_cryptography_reads(tmp_path: Path, names: tuple[str, ...]) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    make_self_signed(cert, key, names[0].lstrip("*."), names)
    assert served_names(cert) == certificate_names(cert.read_bytes())
    assert served_names(cert) == tuple(n.lower() for n in names)


def test_a_ca_issued_certificate_and_its_chain(tmp_path: Path) -> None:
    """An admin's certificate file holds the leaf first, then its chain."""
    ca = trustme.CA()
    leaf = ca.issue_cert("mx.example.org", "Mail.Example.org", "198.51.100.7")
    chain = tmp_path / "chain.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    assert served_names(chain) == certificate_names(chain.read_bytes())
    assert served_names(chain) == ("mx.example.org", "mail.example.org", "198.51.100.7")


def test_a_file_that_is_no_certificate_is_a_value_error(tmp_path: Path) -> None:
    bad = tmp_path / "cert.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    with pytest.raises(ValueError):
        served_names(bad)


def test_the_server_side_of_tls_loads_no_cryptography(tmp_path: Path) -> None:
    """A context made with a self-signed certificate that had to be made: the
    server's process has not imported `cryptography` (the child did the work)."""
    config = tmp_path / "postvakt.toml"
    config.write_text(f'hostname = "mx.pv.test"\ndata_dir = "{tmp_path / "data"}"\n')
    probe = (
        "import sys\n"
        "from postvakt.config import load\n"
        "from postvakt.server.tls import server_context\n"
        f"ctx = server_context(load({str(config)!r}))\n"
        "print(','.join(ctx.names))\n"
        "print(any(m == 'cryptography' or m.startswith('cryptography.') for m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    names, loaded = out.stdout.split()
    assert names == "mx.pv.test,localhost,127.0.0.1,::1"
    assert loaded == "False"
    assert (tmp_path / "data" / "tls" / "cert.pem").exists()


def test_the_command_line_loads_no_cryptography() -> None:
    """`postvakt serve` imports the whole command line (every command is
    registered where it is defined); the commands that read certificates
    (`check`, the doctor's probe) import `cryptography` when they run, so
    that no front process carries it (8 MB PSS with 10,000 idle
    connections, measured)."""
    probe = (
        "import sys\n"
        "import postvakt.cli\n"
        "print(any(m == 'cryptography' or m.startswith('cryptography.') for m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]


def test_the_running_server_has_no_cryptography_mapped(tmp_path: Path) -> None:
    """The live front, started as an admin starts it (`postvakt serve`, with
    TLS listeners and a self-signed certificate made at start): no library of
    `cryptography` is in its address space."""
    srv = start_server(tmp_path)
    try:
        assert srv.proc is not None
        maps = Path(f"/proc/{srv.proc.pid}/maps").read_text()
    finally:
        srv.stop()
    assert "/cryptography/" not in maps
    assert "_ssl" in maps  # the probe reads the mapping it means to
