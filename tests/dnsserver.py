"""A real authoritative DNS server for tests: NSD (Debian's `nsd`) on a
loopback port, serving zones the test writes.

    dns = NsdServer(tmp_path, {"x.example": ["@ MX 10 mx.x.example.", ...]})
    dns.port            # UDP and TCP on 127.0.0.1
    dns.set_zone("x.example", [...]); dns.reload()   # change records, wait until served
    dns.stop()

Only the zones given are served; a name under any other zone is REFUSED,
which a resolver reports as "no server answered": a temporary DNS error
without waiting for a timeout. `[dns] servers = ["127.0.0.1:PORT"]` points
postvakt at it. Nothing here asks real DNS.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

NSD = "/usr/sbin/nsd"
START_TIMEOUT = 20.0
# Records live this long; tests change zones with reload(), never by waiting.
TTL = 60


def nsd_available() -> bool:
    return os.path.exists(NSD)


def _free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = int(t.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port for both UDP and TCP")


def txt_strings(value: str, size: int = 255) -> str:
    """A TXT value as zone-file strings of at most 255 octets each (RFC 1035 §3.3.14)."""
    parts = [value[i : i + size] for i in range(0, len(value), size)] or [""]
    return " ".join('"' + p.replace("\\", "\\\\").replace('"', '\\"') + '"' for p in parts)


class NsdServer:
    def __init__(self, tmp_path: Path, zones: Mapping[str, Iterable[str]]) -> None:
        self.dir = tmp_path / "nsd"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.zones: dict[str, list[str]] = {}
        self.serial = 1
        for origin, records in zones.items():
            self.zones[origin.rstrip(".").lower()] = list(records)
        self._write_all()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "nsd.log"
        self._start()

    @property
    def server(self) -> str:
        """For `[dns] servers`."""
        return f"127.0.0.1:{self.port}"

    def _zone_text(self, origin: str, records: list[str]) -> str:
        head = [
            f"$ORIGIN {origin}.",
            f"$TTL {TTL}",
            f"@ IN SOA ns.{origin}. hostmaster.{origin}. {self.serial} 3600 600 86400 {TTL}",
            f"@ IN NS ns.{origin}.",
            "ns IN A 127.0.0.1",
        ]
        return "\n".join(head + records) + "\n"

    def _write_all(self) -> None:
        conf = [
            "server:",
            f"  port: {self.port}",
            "  ip-address: 127.0.0.1",
            "  do-ip6: no",
            '  username: ""',
            '  chroot: ""',
            f'  zonesdir: "{self.dir}"',
            f'  pidfile: "{self.dir}/nsd.pid"',
            f'  xfrdfile: "{self.dir}/xfrd.state"',
            f'  zonelistfile: "{self.dir}/zone.list"',
            '  database: ""',
            f'  logfile: "{self.dir}/nsd.log"',
            "  verbosity: 1",
            "  server-count: 1",
            "  hide-version: yes",
            "  reuseport: no",
            "remote-control:",
            "  control-enable: no",
        ]
        for origin, records in self.zones.items():
            (self.dir / f"{origin}.zone").write_text(self._zone_text(origin, records))
            conf += ["zone:", f"  name: {origin}", f'  zonefile: "{origin}.zone"']
        (self.dir / "nsd.conf").write_text("\n".join(conf) + "\n")

    def _start(self) -> None:
        self.proc = subprocess.Popen(
            [NSD, "-d", "-c", str(self.dir / "nsd.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + START_TIMEOUT
        origin = next(iter(self.zones))
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read() if self.proc.stderr else b""
                log = self.log.read_text() if self.log.exists() else ""
                raise RuntimeError(f"nsd exited: {err.decode(errors='replace')}\n{log}")
            if self._serial_of(origin) == self.serial:
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("nsd did not answer in time")

    def _serial_of(self, origin: str) -> int | None:
        q = dns.message.make_query(origin + ".", dns.rdatatype.SOA)
        try:
            r = dns.query.udp(q, "127.0.0.1", port=self.port, timeout=0.5)
        except (OSError, dns.exception.DNSException):
            return None
        if r.rcode() != dns.rcode.NOERROR or not r.answer:
            return None
        return int(r.answer[0][0].serial)  # type: ignore[attr-defined]

    def set_zone(self, origin: str, records: Iterable[str]) -> None:
        self.zones[origin.rstrip(".").lower()] = list(records)

    def reload(self) -> None:
        """Rewrite every zone with a new serial and wait until NSD serves it."""
        self.serial += 1
        self._write_all()
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if all(self._serial_of(o) == self.serial for o in self.zones):
                return
            time.sleep(0.05)
        raise RuntimeError("nsd did not load the new zones in time")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
