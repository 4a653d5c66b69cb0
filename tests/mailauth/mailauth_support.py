"""Helpers of the mail authentication tests: NSD present?, and Perl's
Mail::DKIM as the independent DKIM verifier."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from dnsserver import nsd_available

VERIFIER = Path(__file__).with_name("dkim_verify.pl")


def require_nsd() -> None:
    if not nsd_available():
        pytest.skip("nsd (Debian package nsd) is not installed")


def perl_verify(message: bytes, dns_port: int) -> list[str]:
    """Mail::DKIM's verdict: the overall result, then one line per signature."""
    if shutil.which("perl") is None:
        pytest.skip("perl is not installed")
    probe = subprocess.run(
        ["perl", "-MMail::DKIM::Verifier", "-MNet::DNS", "-e1"], capture_output=True
    )
    if probe.returncode != 0:
        pytest.skip("Mail::DKIM / Net::DNS (libmail-dkim-perl, libnet-dns-perl) not installed")
    out = subprocess.run(
        ["perl", str(VERIFIER), str(dns_port)],
        input=message,
        capture_output=True,
        timeout=60,
        check=True,
    )
    return out.stdout.decode().splitlines()
