"""Telling a service manager how the server is doing (systemd's sd_notify protocol).

Under a `Type=notify` unit systemd hands the service a datagram socket in
NOTIFY_SOCKET and waits for READY=1 before it calls the start done. The
protocol is one datagram of newline-separated KEY=VALUE lines; a name that
starts with '@' is in the abstract namespace. Without NOTIFY_SOCKET every
call does nothing, so `serve` run by hand or by another manager is unchanged.

What we send: READY=1 once every listener is up; RELOADING=1 (with
MONOTONIC_USEC, as systemd 253+ asks for Type=notify-reload) when SIGHUP
starts a reload and READY=1 when it is done, applied or refused; STOPPING=1
when SIGTERM starts the shutdown; STATUS= lines a `systemctl status` shows.
"""

from __future__ import annotations

import os
import socket
import time

ENV = "NOTIFY_SOCKET"


def _address(name: str) -> str:
    return "\0" + name[1:] if name.startswith("@") else name


def notify(*lines: str) -> bool:
    """Send one message; False when there is no service manager to tell or it is gone."""
    name = os.environ.get(ENV, "")
    if not name or not (name.startswith("/") or name.startswith("@")):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        try:
            s.sendto("\n".join(lines).encode(), _address(name))
        except OSError:
            return False
    return True


def ready(status: str = "") -> bool:
    return notify("READY=1", *([f"STATUS={status}"] if status else []))


def reloading() -> bool:
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading the configuration")


def stopping() -> bool:
    return notify("STOPPING=1", "STATUS=finishing transactions in flight")
