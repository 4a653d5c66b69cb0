#!/usr/bin/python3 -IS
"""Dovecot post-login script: report a successful login to postvakt (IMAP-before-SMTP).

Written by `postvakt dovecot config`, which fills in the three constants
below. Dovecot's script-login runs it as postvakt's user after every
successful login of the service it is attached to, with the client's address
in $IP and the user in $USER, and passes the rest of the login as arguments.
It tells postvakt's grant socket about the login (one line, see
`postvakt.grants.report`), then runs the rest of the login whatever postvakt
answered: a report that cannot be made costs the user POP-before-SMTP, never
their mailbox. Problems go to standard error, which Dovecot writes to its log.

Only Python's standard library is used: the script runs with the system's
Python, as a user who may not be able to read postvakt's installation.
"""

import os
import socket
import sys

SOCKET = "/var/lib/postvakt/grants.sock"
PROTOCOL = "imap"
# Dovecot's login waits for this script; postvakt answers at once when it runs.
TIMEOUT = 2.0


def report(ip: str, user: str) -> str:
    """postvakt's answer (OK ..., OFF, NO ...), or why there is none."""
    line = f"GRANT {PROTOCOL} {ip} {user}\n".encode("ascii", "replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(TIMEOUT)
            s.connect(SOCKET)
            s.sendall(line)
            answer = b""
            while not answer.endswith(b"\n"):
                chunk = s.recv(512)
                if not chunk:
                    break
                answer += chunk
    except OSError as e:
        return f"NO {SOCKET}: {e.strerror or e}"
    return answer.decode("ascii", "replace").strip() or "NO no answer"


def main() -> None:
    ip, user = os.environ.get("IP", ""), os.environ.get("USER", "")
    try:
        answer = report(ip, user) if ip and user else "NO no IP or USER from Dovecot"
    except Exception as e:  # whatever happens here, the login goes on
        answer = f"NO {e}"
    if not (answer.startswith("OK") or answer == "OFF"):
        print(
            f"postvakt: {PROTOCOL} login of {user} from {ip} not reported: {answer}",
            file=sys.stderr,
            flush=True,
        )
    if len(sys.argv) > 1:
        os.execv(sys.argv[1], sys.argv[1:])


if __name__ == "__main__":
    main()
