"""SPF (RFC 7208): may this IP address send mail for this domain?

`check_host` is the RFC's function of the same name, written as a coroutine
over the DNS client: every lookup is awaited with its lifetime, so an
evaluation never blocks the event loop, and a DNS failure that is not "the
name does not exist" ends the evaluation as temperror (RFC 7208 §2.6.6).
The limits of §4.6.4 bound the work a published record can make us do.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Protocol

from postvakt.dnsclient import DNSError
from postvakt.mailauth.results import SPFResult

# RFC 7208 §4.6.4: at most 10 terms that cause DNS queries (include, a, mx,
# ptr, exists, redirect) per check_host, counted across the whole evaluation.
MAX_DNS_TERMS = 10
# RFC 7208 §4.6.4: more than 2 lookups that find nothing is a permerror
# (stops records that make receivers query for names that do not exist).
MAX_VOID_LOOKUPS = 2
# RFC 7208 §4.6.4: at most 10 MX names, and 10 PTR names, are looked at.
MAX_MX_NAMES = 10
MAX_PTR_NAMES = 10
# RFC 7208 §4.3 / RFC 1035: a domain name is at most 253 characters.
MAX_DOMAIN = 253

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_QUALIFIERS = {
    "+": SPFResult.PASS,
    "-": SPFResult.FAIL,
    "~": SPFResult.SOFTFAIL,
    "?": SPFResult.NEUTRAL,
}
_MECHANISMS = {"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"}
_MODIFIER = re.compile(r"^([A-Za-z][A-Za-z0-9_.-]*)=(.*)$")
_MACRO = re.compile(r"%\{([slodiphcrtvSLODIPHCRTV])(\d*)(r?)([.\-+,/_=]*)\}|%%|%_|%-|%")


class SPFLookups(Protocol):
    async def txt(self, name: str) -> list[str]: ...
    async def a(self, name: str) -> list[str]: ...
    async def aaaa(self, name: str) -> list[str]: ...
    async def mx(self, domain: str) -> list[tuple[int, str]]: ...
    async def ptr(self, ip: str) -> list[str]: ...


class _PermError(Exception):
    pass


class _TempError(Exception):
    pass


@dataclass(frozen=True)
class _Term:
    qualifier: SPFResult
    mechanism: str
    arg: str  # domain-spec or address, unexpanded
    cidr4: int | None = None
    cidr6: int | None = None


@dataclass
class _State:
    ip: IPAddress
    sender: str
    helo: str
    terms: int = 0
    voids: int = 0
    seen: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Outcome:
    result: SPFResult
    detail: str


def _split_cidr(arg: str) -> tuple[str, int | None, int | None]:
    """ "example.org/24//64" -> ("example.org", 24, 64)."""
    cidr4 = cidr6 = None
    m = re.search(r"(?:/(\d{1,2}))?(?://(\d{1,3}))?$", arg)
    if m and (m.group(1) or m.group(2)):
        arg = arg[: m.start()]
        if m.group(1):
            cidr4 = int(m.group(1))
            if cidr4 > 32:
                raise _PermError(f"/{cidr4} is not an IPv4 prefix length")
        if m.group(2):
            cidr6 = int(m.group(2))
            if cidr6 > 128:
                raise _PermError(f"//{cidr6} is not an IPv6 prefix length")
    return arg, cidr4, cidr6


def parse_record(record: str) -> tuple[list[_Term], str | None]:
    """The directives in order and the redirect= target; _PermError on bad syntax."""
    terms: list[_Term] = []
    redirect = None
    exp = None
    for word in record.split()[1:]:
        m = _MODIFIER.match(word)
        if m:
            name = m.group(1).lower()
            if name == "redirect":
                if redirect is not None:
                    raise _PermError("redirect= given twice")
                redirect = m.group(2)
            elif name == "exp":
                if exp is not None:
                    raise _PermError("exp= given twice")
                exp = m.group(2)
            continue  # unknown modifiers are ignored (RFC 7208 §6)
        qualifier = _QUALIFIERS.get(word[0])
        if qualifier is not None:
            word = word[1:]
        else:
            qualifier = SPFResult.PASS
        name, sep, arg = word.partition(":")
        name = name.lower()
        if "/" in name and name.split("/")[0] in ("a", "mx"):
            name, slash, rest = name.partition("/")
            arg = slash + rest
            sep = ""
        if name not in _MECHANISMS:
            raise _PermError(f"unknown mechanism {word!r}")
        if name == "all":
            if sep or arg:
                raise _PermError("'all' takes no argument")
            terms.append(_Term(qualifier, name, ""))
        elif name in ("include", "exists"):
            if not arg:
                raise _PermError(f"{name} needs a domain")
            terms.append(_Term(qualifier, name, arg))
        elif name in ("a", "mx"):
            if not sep and arg and not arg.startswith("/"):
                raise _PermError(f"bad {name} mechanism {word!r}")
            target, c4, c6 = _split_cidr(arg)
            terms.append(_Term(qualifier, name, target, c4, c6))
        elif name == "ptr":
            terms.append(_Term(qualifier, name, arg))
        else:  # ip4, ip6
            try:
                net = ipaddress.ip_network(arg, strict=False)
            except ValueError:
                raise _PermError(f"{word!r} is not a network") from None
            if (name == "ip4") != (net.version == 4):
                raise _PermError(f"{word!r}: wrong address family")
            terms.append(_Term(qualifier, name, str(net)))
    return terms, redirect


def _macro_value(letter: str, state: _State, domain: str) -> str:
    local, _, sdomain = state.sender.rpartition("@")
    ip = state.ip
    if letter == "s":
        return state.sender
    if letter == "l":
        return local or "postmaster"
    if letter == "o":
        return sdomain
    if letter == "d":
        return domain
    if letter == "i":
        if ip.version == 4:
            return str(ip)
        return ".".join(ip.exploded.replace(":", ""))
    if letter == "p":
        # RFC 7208 §7.3: discouraged; "unknown" is what a validated name may default to.
        return "unknown"
    if letter == "v":
        return "in-addr" if ip.version == 4 else "ip6"
    if letter == "h":
        return state.helo
    raise _PermError(f"macro %{{{letter}}} is only allowed in exp=")


def expand(spec: str, state: _State, domain: str) -> str:
    """RFC 7208 §7: macros in a domain-spec."""

    def one(m: re.Match[str]) -> str:
        text = m.group(0)
        if text == "%%":
            return "%"
        if text == "%_":
            return " "
        if text == "%-":
            return "%20"
        if text == "%":
            raise _PermError(f"bad macro in {spec!r}")
        letter, digits, reverse, delims = m.groups()
        value = _macro_value(letter.lower(), state, domain)
        parts = re.split("[" + re.escape(delims or ".") + "]", value)
        if reverse:
            parts.reverse()
        if digits:
            n = int(digits)
            if n == 0:
                raise _PermError("macro with 0 parts")
            parts = parts[-n:]
        return ".".join(parts)

    out = _MACRO.sub(one, spec).rstrip(".")
    while len(out) > MAX_DOMAIN and "." in out:
        out = out.split(".", 1)[1]
    if not out or ".." in out:
        raise _PermError(f"{spec!r} expands to no valid domain")
    return out.lower()


def _in(ip: IPAddress, addresses: list[str], cidr4: int | None, cidr6: int | None) -> bool:
    for a in addresses:
        try:
            net = ipaddress.ip_network(
                f"{a}/{(cidr4 if cidr4 is not None else 32) if ':' not in a else (cidr6 if cidr6 is not None else 128)}",
                strict=False,
            )
        except ValueError:
            continue
        if net.version == ip.version and ip in net:
            return True
    return False


class _Evaluator:
    def __init__(self, dns: SPFLookups, state: _State) -> None:
        self.dns = dns
        self.state = state

    def _count(self) -> None:
        self.state.terms += 1
        if self.state.terms > MAX_DNS_TERMS:
            raise _PermError(f"more than {MAX_DNS_TERMS} DNS lookups")

    def _void(self) -> None:
        self.state.voids += 1
        if self.state.voids > MAX_VOID_LOOKUPS:
            raise _PermError(f"more than {MAX_VOID_LOOKUPS} lookups found nothing")

    async def _lookup(self, kind: str, name: str) -> list[str]:
        try:
            if kind == "a":
                out = await self.dns.a(name)
            elif kind == "aaaa":
                out = await self.dns.aaaa(name)
            else:
                out = await self.dns.txt(name)
        except DNSError as e:
            if e.temporary:
                raise _TempError(str(e)) from None
            out = []
        return out

    async def _addresses(self, name: str) -> list[str]:
        return await self._lookup("a" if self.state.ip.version == 4 else "aaaa", name)

    async def record(self, domain: str) -> str | None:
        try:
            txts = await self.dns.txt(domain)
        except DNSError as e:
            if e.temporary:
                raise _TempError(str(e)) from None
            return None
        spf = [t for t in txts if t.lower() == "v=spf1" or t.lower().startswith("v=spf1 ")]
        if len(spf) > 1:
            raise _PermError(f"{domain} publishes {len(spf)} SPF records")
        return spf[0] if spf else None

    async def check(self, domain: str) -> Outcome:
        """check_host() for `domain`: PASS/FAIL/... or raises _TempError/_PermError."""
        record = await self.record(domain)
        if record is None:
            return Outcome(SPFResult.NONE, f"{domain} publishes no SPF record")
        terms, redirect = parse_record(record)
        ip = self.state.ip
        for term in terms:
            if await self._matches(term, domain):
                what = term.mechanism + (f":{term.arg}" if term.arg else "")
                return Outcome(term.qualifier, f"{ip} matched {what} in the record of {domain}")
        if redirect is not None:
            self._count()
            target = expand(redirect, self.state, domain)
            out = await self.check(target)
            if out.result == SPFResult.NONE:
                raise _PermError(f"redirect={target} has no SPF record")
            return out
        return Outcome(SPFResult.NEUTRAL, f"{ip} matched nothing in the record of {domain}")

    async def _matches(self, term: _Term, domain: str) -> bool:
        ip = self.state.ip
        m = term.mechanism
        if m == "all":
            return True
        if m in ("ip4", "ip6"):
            net = ipaddress.ip_network(term.arg)
            return net.version == ip.version and ip in net
        self._count()
        target = expand(term.arg, self.state, domain) if term.arg else domain
        if m == "include":
            out = await self.check(target)
            if out.result == SPFResult.PASS:
                return True
            if out.result == SPFResult.NONE:
                raise _PermError(f"include:{target} has no SPF record")
            return False
        if m == "exists":
            found = await self._lookup("a", target)
            if not found:
                self._void()
            return bool(found)
        if m == "a":
            found = await self._addresses(target)
            if not found:
                self._void()
            return _in(ip, found, term.cidr4, term.cidr6)
        if m == "mx":
            try:
                mx = await self.dns.mx(target)
            except DNSError as e:
                if e.temporary:
                    raise _TempError(str(e)) from None
                mx = []
            if not mx:
                self._void()
            if len(mx) > MAX_MX_NAMES:
                raise _PermError(f"{target} has more than {MAX_MX_NAMES} MX records")
            for _, host in sorted(mx):
                if host and _in(ip, await self._addresses(host), term.cidr4, term.cidr6):
                    return True
            return False
        # ptr: names of the address whose own addresses include it (RFC 7208 §5.5).
        try:
            names = await self.dns.ptr(str(ip))
        except DNSError:
            return False  # §5.5: a failed PTR lookup is no match, not an error
        for name in names[:MAX_PTR_NAMES]:
            name = name.lower().rstrip(".")
            if name != target and not name.endswith("." + target):
                continue
            try:
                if _in(ip, await self._addresses(name), None, None):
                    return True
            except _TempError:
                continue
        return False


async def check_host(dns: SPFLookups, ip: str, domain: str, sender: str, helo: str) -> Outcome:
    """RFC 7208 §4: the SPF result for `ip` sending as `sender` (whose domain is `domain`)."""
    try:
        addr = ipaddress.ip_address(ip.strip("[]"))
    except ValueError:
        return Outcome(SPFResult.PERMERROR, f"{ip!r} is not an IP address")
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    domain = domain.lower().rstrip(".")
    labels = domain.split(".")
    if not domain or len(labels) < 2 or any(not x or len(x) > 63 for x in labels):
        # §4.3: not a fully qualified domain: "none".
        return Outcome(SPFResult.NONE, f"{domain or '(empty)'} is not a fully qualified domain")
    state = _State(ip=addr, sender=sender, helo=helo)
    try:
        return await _Evaluator(dns, state).check(domain)
    except _TempError as e:
        return Outcome(SPFResult.TEMPERROR, f"DNS: {e}")
    except _PermError as e:
        return Outcome(SPFResult.PERMERROR, str(e))
