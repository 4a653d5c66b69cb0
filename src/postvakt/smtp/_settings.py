"""What one listener lets the protocol core do."""

from __future__ import annotations

from dataclasses import dataclass

from postvakt.smtp._data import DEFAULT_MAX_LINE_LENGTH


@dataclass(frozen=True)
class Settings:
    hostname: str
    # Postfix message_size_limit default (10240000 bytes).
    max_message_size: int = 10_240_000
    # Postfix smtpd_recipient_limit; RFC 5321 §4.5.3.1.8 asks for at least 100.
    max_recipients: int = 1000
    # Postfix smtpd_soft_error_limit / smtpd_hard_error_limit.
    soft_error_limit: int = 10
    hard_error_limit: int = 20
    # Postfix hopcount_limit.
    max_hops: int = 50
    # Octets in one line of a message (CRLF not counted); 0 = no limit but the size.
    max_line_length: int = DEFAULT_MAX_LINE_LENGTH
    # STARTTLS may be offered (a certificate exists).
    tls_available: bool = False
    # Implicit TLS (port 465): the connection is already encrypted.
    tls_active: bool = False
    # Submission: MAIL and AUTH need TLS first.
    require_tls: bool = False
    # Submission: MAIL needs a successful AUTH.
    require_auth: bool = False
    # Offered only once TLS is active; empty disables AUTH entirely.
    auth_mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN")
