"""Private Postfix instances for tests (the doctor's and relay test's peer).

A Postfix from Debian's package, started with its own config directory, queue
and data directory, listening on a free loopback port. It never delivers
anywhere: every transport is `discard`. (`error` would be the obvious choice,
but smtpd then refuses foreign recipients at RCPT time, which would hide the
very open relay the tests must see.)

127.0.0.1 is the instance's own network; 127.0.0.2 is an outside client.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from support import free_port

POSTFIX = "/usr/sbin/postfix"
CAREFUL_DOMAIN = "careful.test"
OPEN_DOMAIN = "open.test"
START_TIMEOUT = 20.0

MASTER_CF = """\
{listen} inet n - n - - smtpd
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
showq unix n - n - - showq
pickup unix n - n 60 1 pickup
"""

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {dir}/spool
data_directory = {dir}/data
maillog_file = {dir}/maillog
maillog_file_prefixes = {dir}
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = mx.{domain}
mydomain = {domain}
myorigin = {domain}
mydestination = {domain}
relayhost =
default_transport = discard:test instance, nothing leaves
local_transport = discard:test instance, nothing is stored
alias_maps =
alias_database =
local_recipient_maps =
biff = no
smtpd_banner = $myhostname ESMTP Postfix
mynetworks = {mynetworks}
smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination
"""


class PostfixInstance:
    def __init__(self, domain: str, mynetworks: str) -> None:
        # Postfix's daemons run as the postfix user, who cannot enter pytest's
        # private temporary directories: use a directory of its own in /tmp.
        self.dir = Path(tempfile.mkdtemp(prefix="postvakt-postfix-"))
        os.chmod(self.dir, 0o755)
        self.domain = domain
        self.port = free_port()
        for sub in ("etc", "spool", "data"):
            (self.dir / sub).mkdir()
        shutil.chown(self.dir / "data", "postfix")
        (self.dir / "etc" / "main.cf").write_text(
            MAIN_CF.format(dir=self.dir, domain=domain, mynetworks=mynetworks)
        )
        (self.dir / "etc" / "master.cf").write_text(
            MASTER_CF.format(listen=f"127.0.0.1:{self.port}")
        )

    def postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [POSTFIX, "-c", str(self.dir / "etc"), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def log(self) -> str:
        p = self.dir / "maillog"
        return p.read_text(errors="replace") if p.exists() else ""

    def start(self) -> None:
        check = self.postfix("check")
        if check.returncode != 0:
            raise RuntimeError(f"postfix check failed: {check.stderr}{self.log()}")
        self.postfix("start")
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.settimeout(5)
                    if s.recv(100).startswith(b"220"):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"Postfix did not start:\n{self.log()}")

    def queued(self, settle: float = 5.0) -> list[str]:
        """Queue files left once smtpd has cleaned up.

        smtpd opens a queue file at the first accepted RCPT and cleanup removes
        it after RSET/QUIT, a moment later; a message that got past DATA stays.
        """
        spool = self.dir / "spool"
        deadline = time.monotonic() + settle
        while True:
            out = []
            for q in ("incoming", "active", "deferred", "hold", "maildrop", "corrupt"):
                d = spool / q
                if d.is_dir():
                    out += [str(p) for p in d.rglob("*") if p.is_file()]
            if not out or time.monotonic() > deadline:
                return out
            time.sleep(0.1)

    def accepted_messages(self) -> list[str]:
        """Log lines of messages that entered the queue (cleanup's message-id, qmgr's from=)."""
        return [
            line
            for line in self.log().splitlines()
            if "postfix/cleanup" in line
            and "message-id=" in line
            or "postfix/qmgr" in line
            and "from=<" in line
        ]

    def stop(self) -> None:
        self.postfix("stop")
        shutil.rmtree(self.dir, ignore_errors=True)


def postfix_usable() -> str:
    """Why a private Postfix cannot run here, or "" if it can."""
    if not os.path.exists(POSTFIX):
        return "postfix is not installed"
    if os.geteuid() != 0:
        return "a private Postfix instance needs root (its master process runs as root)"
    return ""
