"""The PROXY protocol header, versions 1 and 2 (HAProxy's specification), sans-IO.

A load balancer in front of the server opens its own TCP connection and puts
one header before the client's bytes, naming the client it stands for. This
module reads that header from bytes and nothing else.

House rules:
- No sockets, no asyncio, no time: bytes in, one of three results out.
- `parse()` never raises. Any input gives a `ProxyHeader` (complete, with the
  number of bytes it took), `NEED_MORE` (every byte given belongs to the
  header so far: the caller may consume them all and wait), or a `ProxyError`
  whose reason is fit for a log line.
- Strict: exactly the spec's grammar (single spaces, decimal ports without
  leading zeros, addresses of the family named). A header that a lenient
  reader and a strict one would read differently is refused, not guessed.
- v2 LOCAL and v1 UNKNOWN (a health check from the balancer itself) parse to a
  header with `local=True` and no addresses: the connection's own ends apply.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

# Spec §2.1: "a line ... cannot be more than 107 characters" including CRLF.
V1_MAX_LENGTH: Final = 107
V1_PREFIX: Final = b"PROXY "
# Spec §2.2: the 12-byte signature, then version/command, family, length.
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_LENGTH: Final = 16
# The address block plus TLVs. HAProxy sends a few small TLVs (ALPN, SSL
# details, unique id); 4 KiB is ample and bounds what a bad peer makes us hold.
V2_MAX_PAYLOAD: Final = 4096
# Address block sizes by family (spec §2.2): IPv4, IPv6, UNIX.
V2_INET_LENGTH: Final = 12
V2_INET6_LENGTH: Final = 36
V2_UNIX_LENGTH: Final = 216
# The most bytes a header can take; what a reader peeks at once.
MAX_HEADER_LENGTH: Final = V2_FIXED_LENGTH + V2_MAX_PAYLOAD


@dataclass(frozen=True)
class ProxyHeader:
    version: int  # 1 or 2
    length: int  # bytes of the input the header took
    local: bool = False  # v2 LOCAL / v1 UNKNOWN / v2 UNSPEC: use the connection's own ends
    source: tuple[str, int] | None = None  # the client the balancer stands for
    destination: tuple[str, int] | None = None  # the address the client connected to


@dataclass(frozen=True)
class ProxyError:
    reason: str


class _NeedMore:
    def __repr__(self) -> str:
        return "NEED_MORE"


NEED_MORE: Final = _NeedMore()

Result = ProxyHeader | ProxyError | _NeedMore


def parse(data: bytes) -> Result:
    """Read one PROXY header from the start of `data`."""
    if not data:
        return NEED_MORE
    if data[:1] == V1_PREFIX[:1]:
        return _parse_v1(data)
    if data[:1] == V2_SIGNATURE[:1]:
        return _parse_v2(data)
    return ProxyError(f"no PROXY header (the connection began with {_quote(data)})")


def _quote(data: bytes) -> str:
    return repr(bytes(data[:16]))


def _parse_v1(data: bytes) -> Result:
    head = data[: len(V1_PREFIX)]
    if not V1_PREFIX.startswith(head):
        return ProxyError(f"no PROXY header (the connection began with {_quote(data)})")
    if len(head) < len(V1_PREFIX):
        return NEED_MORE
    end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        window = data[:V1_MAX_LENGTH]
        # A lone CR at the end may be the start of the CRLF.
        body = window[:-1] if window.endswith(b"\r") else window
        if any(b < 0x20 or b > 0x7E for b in body):
            return ProxyError("PROXY v1 header has a control or non-ASCII byte")
        if len(data) >= V1_MAX_LENGTH:
            return ProxyError(f"PROXY v1 header longer than {V1_MAX_LENGTH} bytes")
        return NEED_MORE
    line = data[len(V1_PREFIX) : end]
    length = end + 2
    if any(b < 0x20 or b > 0x7E for b in line):
        return ProxyError("PROXY v1 header has a control or non-ASCII byte")
    text = line.decode("ascii")
    if text == "UNKNOWN" or text.startswith("UNKNOWN "):
        return ProxyHeader(version=1, length=length, local=True)
    parts = text.split(" ")
    if len(parts) != 5:
        return ProxyError(f"PROXY v1 header is not 'PROXY TCP4|TCP6 src dst sport dport': {text!r}")
    proto, src, dst, sport, dport = parts
    if proto not in ("TCP4", "TCP6"):
        return ProxyError(f"PROXY v1 header names an unknown protocol {proto!r}")
    want = 4 if proto == "TCP4" else 6
    src_ip = _v1_address(src, want)
    dst_ip = _v1_address(dst, want)
    if src_ip is None or dst_ip is None:
        return ProxyError(f"PROXY v1 header has an address that is not {proto}: {text!r}")
    sp, dp = _v1_port(sport), _v1_port(dport)
    if sp is None or dp is None:
        return ProxyError(f"PROXY v1 header has a port that is not 0-65535: {text!r}")
    return ProxyHeader(version=1, length=length, source=(src_ip, sp), destination=(dst_ip, dp))


def _v1_address(text: str, version: int) -> str | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if ip.version != version or (version == 6 and "%" in text):
        return None
    return str(ip)


def _v1_port(text: str) -> int | None:
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        return None
    if len(text) > 1 and text[0] == "0":
        return None
    port = int(text)
    return port if port <= 65535 else None


def _parse_v2(data: bytes) -> Result:
    sig = data[: len(V2_SIGNATURE)]
    if not V2_SIGNATURE.startswith(sig):
        return ProxyError(f"no PROXY header (the connection began with {_quote(data)})")
    if len(data) < V2_FIXED_LENGTH:
        return NEED_MORE
    ver_cmd, fam = data[12], data[13]
    if ver_cmd >> 4 != 2:
        return ProxyError(f"PROXY v2 header with version {ver_cmd >> 4}")
    command = ver_cmd & 0x0F
    if command not in (0, 1):
        return ProxyError(f"PROXY v2 header with unknown command {command}")
    payload = int.from_bytes(data[14:16], "big")
    if payload > V2_MAX_PAYLOAD:
        return ProxyError(f"PROXY v2 header of {payload} bytes (at most {V2_MAX_PAYLOAD})")
    length = V2_FIXED_LENGTH + payload
    if len(data) < length:
        return NEED_MORE
    if command == 0:  # LOCAL: the balancer's own connection (a health check)
        return ProxyHeader(version=2, length=length, local=True)
    family, transport = fam >> 4, fam & 0x0F
    if family == 0:  # UNSPEC: the spec says to use the connection's own ends
        return ProxyHeader(version=2, length=length, local=True)
    if transport != 1:
        return ProxyError(f"PROXY v2 header for transport {transport}, not TCP (1)")
    block = data[V2_FIXED_LENGTH:length]
    if family == 1:
        if payload < V2_INET_LENGTH:
            return ProxyError(f"PROXY v2 IPv4 header with {payload} address bytes")
        src = str(ipaddress.IPv4Address(block[0:4]))
        dst = str(ipaddress.IPv4Address(block[4:8]))
        ports = block[8:12]
    elif family == 2:
        if payload < V2_INET6_LENGTH:
            return ProxyError(f"PROXY v2 IPv6 header with {payload} address bytes")
        src = str(ipaddress.IPv6Address(block[0:16]))
        dst = str(ipaddress.IPv6Address(block[16:32]))
        ports = block[32:36]
    else:
        return ProxyError(f"PROXY v2 header for address family {family}, not IPv4 or IPv6")
    sport = int.from_bytes(ports[0:2], "big")
    dport = int.from_bytes(ports[2:4], "big")
    return ProxyHeader(version=2, length=length, source=(src, sport), destination=(dst, dport))
