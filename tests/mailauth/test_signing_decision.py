"""Who is DKIM-signed, as a table: (road, From: domains) -> signing domain or why not."""

from __future__ import annotations

import pytest

from postvakt.config import DKIMConfig
from postvakt.mailauth.signing import from_domains, signing_domain
from postvakt.policy.roads import GENERATED, PERMIT_AUTHENTICATED, PERMIT_NETWORKS
from postvakt.queue.envelope import Envelope, Recipient

DKIM = DKIMConfig(sign=(("pv.test", ("s1", "s1e")), ("sub.pv.test", ("s9",))))
LOCAL = ("pv.test", "sub.pv.test", "other-local.test")


@pytest.mark.parametrize(
    ("road", "domains", "signer", "why"),
    [
        (PERMIT_AUTHENTICATED, ["pv.test"], "pv.test", "signed for pv.test"),
        (PERMIT_NETWORKS, ["pv.test"], "pv.test", "came by permit_networks"),
        # The most specific configured domain signs.
        (PERMIT_AUTHENTICATED, ["sub.pv.test"], "sub.pv.test", "signed for sub.pv.test"),
        # Mail from outside (or with a sender warning) is never signed.
        (None, ["pv.test"], None, "mail from outside"),
        (PERMIT_AUTHENTICATED, ["gmail.example"], None, "not one of our local domains"),
        (PERMIT_AUTHENTICATED, ["other-local.test"], None, "names no key for other-local.test"),
        (PERMIT_AUTHENTICATED, ["pv.test", "gmail.example"], None, "several domains"),
        (PERMIT_AUTHENTICATED, [], None, "no From: address"),
        # Our own bounces come from MAILER-DAEMON@<hostname>: signed by its parent domain.
        (GENERATED, ["mx.pv.test"], "pv.test", "came by generated"),
        (GENERATED, ["mx.elsewhere.test"], None, "names no key"),
    ],
)
def test_signing_domain(road: str | None, domains: list[str], signer: str | None, why: str) -> None:
    got, reason = signing_domain(road, domains, LOCAL, DKIM)
    assert got == signer
    assert why in reason


def test_from_domains_reads_the_header_only() -> None:
    msg = b"Subject: x\r\nFrom: A <a@PV.test>, b@x.example\r\n\r\nFrom: c@evil.example\r\n"
    assert from_domains(msg) == ["pv.test", "x.example"]


def test_envelope_keeps_road_and_authserv_id_and_reads_old_files() -> None:
    env = Envelope("a@pv.test", (Recipient("b@x.example"),), 1.0, "127.0.0.1", "h", "a@pv.test",
                   road=PERMIT_AUTHENTICATED, authserv_id="mx.pv.test")  # fmt: skip
    again = Envelope.from_json(env.to_json())
    assert again.road == PERMIT_AUTHENTICATED and again.authserv_id == "mx.pv.test"
    old = b'{"sender":"a@pv.test","recipients":[{"address":"b@x.example"}],"received_at":1,"client_ip":"1.2.3.4","helo":"h","login":null}'
    legacy = Envelope.from_json(old)
    assert legacy.road is None and legacy.authserv_id == ""
