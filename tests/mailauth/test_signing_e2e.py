"""DKIM signing end to end: keys made by `postvakt dkim keygen`, their records
pasted into a real DNS zone (NSD), a message sent on the submission port with
AUTH to a remote smtp-sink, verified by Perl's Mail::DKIM (not the library
that signed it) against the published key; a wrong published key fails."""

from __future__ import annotations

import asyncio
import poplib
import smtplib
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from mailauth_support import perl_verify, require_nsd
from zones import message

from dnsserver import NsdServer
from postvakt.config import DNSConfig, HostPort
from postvakt.dnsclient import DNSClient
from postvakt.mailauth import dkimverify, signing
from postvakt.mailauth.results import DKIMResult
from support import LOCAL_DOMAIN, Running, SmtpSink, base_config, postvakt, to_toml

ALICE = f"alice@{LOCAL_DOMAIN}"
PASSWORD = "signing test password"
REMOTE = "other.example"
REFUSING = "refusing.example"


@dataclass
class World:
    srv: Running
    nsd: NsdServer
    sink: SmtpSink
    records: list[str]  # what `dkim keygen` printed, as pasted into the zone


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_nsd()
    tmp = tmp_path_factory.mktemp("signing")
    sink = SmtpSink(tmp)
    refusing = SmtpSink(tmp, extra=["-B", "550 5.1.1 no such user", "-f", "rcpt"])
    data_dir = tmp / "data"
    cfg_path = tmp / "postvakt.toml"
    # NSD first (the server's [dns] must name its port), with the zone filled in below.
    # sink.example names the remote peer: delivery finds it through [dns] too.
    nsd = NsdServer(
        tmp / "dns", {LOCAL_DOMAIN: ["@ IN A 127.0.0.1"], "example": ["sink IN A 127.0.0.1"]}
    )
    cfg = base_config(
        data_dir,
        dns={"servers": [nsd.server], "timeout": "5s"},
        dkim={"sign": {LOCAL_DOMAIN: ["s2026", "s2026e"]}},
        delivery={
            "routes": {
                REMOTE: f"sink.example:{sink.port}",
                REFUSING: f"127.0.0.1:{refusing.port}",
            }
        },
    )
    cfg_path.write_text(to_toml(cfg))
    rsa = postvakt("dkim", "keygen", LOCAL_DOMAIN, config=cfg_path)
    ed = postvakt("dkim", "keygen", LOCAL_DOMAIN, "--algorithm", "ed25519", config=cfg_path)
    records = [rsa.stdout.strip(), ed.stdout.strip()]
    nsd.set_zone(LOCAL_DOMAIN, ["@ IN A 127.0.0.1", *records])
    nsd.reload()
    srv = Running(cfg_path, data_dir)
    srv.add_user(ALICE, PASSWORD)
    srv.start()
    yield World(srv, nsd, sink, records)
    srv.stop()
    sink.stop()
    refusing.stop()
    nsd.cleanup()


def submit(srv: Running, to: str, data: bytes) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", srv.port("submission"), timeout=60) as s:
        s.starttls(context=ctx)
        s.login(ALICE, PASSWORD)
        s.sendmail(ALICE, [to], data)


def arrived(sink: SmtpSink, marker: str, timeout: float = 30.0) -> bytes:
    """The dump of the one message containing `marker`, as the peer received it."""
    deadline = time.monotonic() + timeout
    while True:
        found = [m for m in sink.messages() if marker in m]
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    time.sleep(0.1)  # let the dump finish writing
    found = [m for m in sink.messages() if marker in m]
    assert len(found) == 1, found
    return found[0].encode()


def unfolded_header(dump: bytes) -> str:
    head = dump.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0].decode()
    return head.replace("\n ", " ").replace("\n\t", " ")


def test_keygen_writes_a_private_key_0600_and_prints_one_zone_line(world: World) -> None:
    key = world.srv.data_dir / "dkim" / f"{LOCAL_DOMAIN}.s2026.key"
    assert key.stat().st_mode & 0o777 == 0o600
    # RSA-2048 by default (RFC 8301 §3.2); the second key is the ed25519 one asked for.
    rsa_key = serialization.load_pem_private_key(key.read_bytes(), password=None)
    assert isinstance(rsa_key, RSAPrivateKey) and rsa_key.key_size == 2048
    ed_file = world.srv.data_dir / "dkim" / f"{LOCAL_DOMAIN}.s2026e.key"
    ed_key = serialization.load_pem_private_key(ed_file.read_bytes(), password=None)
    assert isinstance(ed_key, Ed25519PrivateKey)
    rsa, ed = world.records
    assert rsa.startswith(f's2026._domainkey.{LOCAL_DOMAIN}. IN TXT "v=DKIM1; k=rsa; p=')
    # A 2048-bit key's record is longer than one TXT string may be: split.
    assert rsa.count('" "') >= 1 and all(len(p) <= 255 for p in rsa.split('"')[1::2])
    assert ed.startswith(f's2026e._domainkey.{LOCAL_DOMAIN}. IN TXT "v=DKIM1; k=ed25519; p=')


def test_submitted_mail_is_signed_and_an_independent_verifier_accepts_it(world: World) -> None:
    submit(world.srv, f"friend@{REMOTE}", message(ALICE, f"friend@{REMOTE}", "signed-1"))
    dump = arrived(world.sink, "signed-1")
    lines = perl_verify(dump, world.nsd.port)
    assert lines[0] == "pass", lines
    assert f"pass d={LOCAL_DOMAIN} s=s2026 a=rsa-sha256" in lines
    head = unfolded_header(dump)
    assert "c=relaxed/relaxed" in head
    # From: signed one time more than it occurs: none can be added.
    assert "h=from : subject : date : message-id : to : from;" in " ".join(head.split())
    # The ed25519 signature (RFC 8463): this Mail::DKIM does not know it, dkimpy does.
    dns = DNSClient.from_config(DNSConfig(servers=(HostPort("127.0.0.1", world.nsd.port),)))
    checks = asyncio.run(dkimverify.verify(dns, dump))
    assert {(c.selector, c.result) for c in checks} == {
        ("s2026", DKIMResult.PASS),
        ("s2026e", DKIMResult.PASS),
    }
    log = world.srv.log()
    assert f"dkim=signed d={LOCAL_DOMAIN} s=s2026(rsa),s2026e(ed25519)" in log
    assert f"relay=sink.example[127.0.0.1]:{world.sink.port}" in log


class POP3SFrom(poplib.POP3_SSL):
    """POP3 with implicit TLS from a chosen loopback address."""

    def __init__(self, port: int, source: str) -> None:
        self.source = source
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        super().__init__("127.0.0.1", port, context=ctx, timeout=60)

    def _create_socket(self, timeout: float) -> socket.socket:
        sock = socket.create_connection(
            (self.host, self.port), timeout, source_address=(self.source, 0)
        )
        return self.context.wrap_socket(sock, server_hostname=self.host)


def test_mail_that_came_by_the_other_roads_is_signed_too(world: World) -> None:
    """Own network (127.0.0.1 is in [relay] networks) and POP-before-SMTP (127.0.0.2
    after a POP3 login): no SMTP AUTH, our user's From:, signed all the same."""
    to = f"friend@{REMOTE}"
    with smtplib.SMTP("127.0.0.1", world.srv.port("smtp"), timeout=60) as s:
        s.sendmail(ALICE, [to], message(ALICE, to, "signed-networks"))
    with smtplib.SMTP(
        "127.0.0.1", world.srv.port("smtp"), timeout=60, source_address=("127.0.0.2", 0)
    ) as s:
        s.ehlo()
        code, text = s.mail(ALICE)
        assert code == 553 and b"not logged in" in text  # 127.0.0.2 is on no road yet
    pop = POP3SFrom(world.srv.port("pop3s"), "127.0.0.2")
    pop.user(ALICE)
    pop.pass_(PASSWORD)
    pop.quit()
    with smtplib.SMTP(
        "127.0.0.1", world.srv.port("smtp"), timeout=60, source_address=("127.0.0.2", 0)
    ) as s:
        s.sendmail(ALICE, [to], message(ALICE, to, "signed-pop-before-smtp"))
    for subject in ("signed-networks", "signed-pop-before-smtp"):
        lines = perl_verify(arrived(world.sink, subject), world.nsd.port)
        assert lines[0] == "pass", (subject, lines)
        assert f"pass d={LOCAL_DOMAIN} s=s2026 a=rsa-sha256" in lines, (subject, lines)


def test_bounces_we_generate_are_signed_for_our_domain(world: World) -> None:
    """A client of our network relays for someone@other.example; the far side
    refuses; the bounce to other.example is signed d=pv.test."""
    with smtplib.SMTP("127.0.0.1", world.srv.port("smtp"), timeout=60) as s:
        s.sendmail(
            f"someone@{REMOTE}",
            [f"nobody@{REFUSING}"],
            message(f"someone@{REMOTE}", f"nobody@{REFUSING}", "to-be-bounced"),
        )
    dump = arrived(world.sink, "Undelivered Mail Returned to Sender")
    assert "From: Mail Delivery System <MAILER-DAEMON@mx.pv.test>" in dump.decode()
    lines = perl_verify(dump, world.nsd.port)
    assert lines[0] == "pass", lines
    assert f"pass d={LOCAL_DOMAIN} s=s2026 a=rsa-sha256" in lines


def test_mail_with_a_foreign_from_is_not_signed(world: World) -> None:
    """A client of our network sending as someone@other.example: not ours to vouch for."""
    with smtplib.SMTP("127.0.0.1", world.srv.port("smtp"), timeout=60) as s:
        s.sendmail(
            f"someone@{REMOTE}",
            [f"friend@{REMOTE}"],
            message(f"someone@{REMOTE}", f"friend@{REMOTE}", "not-ours"),
        )
    dump = arrived(world.sink, "not-ours")
    assert b"DKIM-Signature:" not in dump


def test_show_check_then_wrong_then_missing_record(world: World) -> None:
    ok = world.srv.cli("dkim", "show", LOCAL_DOMAIN, "--check", check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count("check: ok:") == 2
    assert world.records[0] in ok.stdout

    submit(world.srv, f"friend@{REMOTE}", message(ALICE, f"friend@{REMOTE}", "signed-2"))
    dump = arrived(world.sink, "signed-2")
    # Publish another key under the same selector: the signature no longer verifies.
    other = signing.key_from_pem(signing.generate_pem("rsa"), LOCAL_DOMAIN, "s2026", "test")
    wrong = signing.zone_line(LOCAL_DOMAIN, "s2026", other.record)
    try:
        world.nsd.set_zone(LOCAL_DOMAIN, ["@ IN A 127.0.0.1", wrong, world.records[1]])
        world.nsd.reload()
        lines = perl_verify(dump, world.nsd.port)
        assert lines[0] == "fail", lines
        assert f"d={LOCAL_DOMAIN} s=s2026 a=rsa-sha256" in lines[1] and lines[1].startswith("fail")
        differs = world.srv.cli("dkim", "show", LOCAL_DOMAIN, "--check", check=False)
        assert differs.returncode == 1
        assert "check: DIFFERS: s2026._domainkey.pv.test publishes another key" in differs.stdout

        world.nsd.set_zone(LOCAL_DOMAIN, ["@ IN A 127.0.0.1", world.records[1]])
        world.nsd.reload()
        missing = world.srv.cli("dkim", "show", LOCAL_DOMAIN, "--check", check=False)
        assert missing.returncode == 1
        assert "check: MISSING: s2026._domainkey.pv.test does not exist in DNS" in missing.stdout
    finally:
        world.nsd.set_zone(LOCAL_DOMAIN, ["@ IN A 127.0.0.1", *world.records])
        world.nsd.reload()


def test_serve_refuses_to_start_without_the_configured_key(tmp_path: Path) -> None:
    cfg_path = tmp_path / "postvakt.toml"
    cfg_path.write_text(
        to_toml(base_config(tmp_path / "data", dkim={"sign": {LOCAL_DOMAIN: "nokey"}}))
    )
    srv = Running(cfg_path, tmp_path / "data")
    with pytest.raises(RuntimeError) as e:
        srv.start()
    assert "[dkim] sign" in str(e.value) and "postvakt dkim keygen pv.test --selector nokey" in str(
        e.value
    )
