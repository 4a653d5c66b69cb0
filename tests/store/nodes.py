"""Two `postvakt serve` nodes sharing one state store, and the clients that talk to them."""

from __future__ import annotations

import email.policy
import smtplib
import ssl
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from support import RawClient, Running, base_config, connect_from, rcpt_on, to_toml

PASSWORD = "secret"
REMOTE = "other.example"


def start_node(
    root: Path, name: str, users: dict[str, str], store: dict[str, Any], **sections: Any
) -> Running:
    data_dir = root / name / "data"
    cfg = base_config(
        data_dir,
        server={"node": name},
        store=store,
        relay={"pop_before_smtp": "10m", **sections.pop("relay", {})},
        **sections,
    )
    cfg_path = root / name / "postvakt.toml"
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(to_toml(cfg))
    srv = Running(cfg_path, data_dir)
    for address, password in users.items():
        srv.add_user(address, password)
    return srv.start()


def tls_ctx() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def rcpt_reply(srv: Running, source_ip: str, rcpt: str = f"carol@{REMOTE}") -> str:
    c = RawClient(srv.port("smtp"), source_ip)
    return rcpt_on(c, f"bob@{REMOTE}", rcpt, helo="client.other.example")


class Pop3:
    """A POP3S session from source_ip; `login` returns the reply to PASS."""

    def __init__(self, srv: Running, source_ip: str) -> None:
        self.sock = tls_ctx().wrap_socket(connect_from(source_ip, srv.port("pop3s")))
        self.f = self.sock.makefile("rb")
        assert self.f.readline().startswith(b"+OK")

    def cmd(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.f.readline().decode().strip()

    def login(self, user: str, password: str = PASSWORD) -> str:
        assert self.cmd(f"USER {user}").startswith("+OK")
        return self.cmd(f"PASS {password}")

    def close(self) -> None:
        try:
            self.cmd("QUIT")
        except OSError:
            pass
        self.f.close()
        self.sock.close()


def pop3_login(srv: Running, source_ip: str, user: str, password: str = PASSWORD) -> str:
    p = Pop3(srv, source_ip)
    try:
        return p.login(user, password)
    finally:
        p.close()


def smtp_auth(srv: Running, source_ip: str, user: str, password: str = PASSWORD) -> int:
    """The AUTH reply code on 587 after STARTTLS."""
    with smtplib.SMTP(
        "127.0.0.1", srv.port("submission"), source_address=(source_ip, 0), timeout=60
    ) as s:
        s.starttls(context=tls_ctx())
        try:
            s.login(user, password)
        except smtplib.SMTPAuthenticationError as e:
            return e.smtp_code
        return 235


def submit(srv: Running, source_ip: str, login: str, subject: str) -> str:
    """One message by SMTP AUTH on 587; the reply to the end of DATA (or to MAIL/RCPT)."""
    msg = EmailMessage()
    msg["From"] = login
    msg["To"] = f"bob@{REMOTE}"
    msg["Subject"] = subject
    msg.set_content(f"body of {subject}\n")
    with smtplib.SMTP(
        "127.0.0.1", srv.port("submission"), source_address=(source_ip, 0), timeout=60
    ) as s:
        s.starttls(context=tls_ctx())
        s.login(login, PASSWORD)
        code, text = s.mail(login)
        if code == 250:
            code, text = s.rcpt(f"bob@{REMOTE}")
        if code != 250:
            return f"{code} {text.decode()}"
        code, text = s.data(msg.as_bytes(policy=email.policy.SMTP))
    return f"{code} {text.decode()}"
