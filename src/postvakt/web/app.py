"""The HTTP side of postvakt.web: routes, limits and headers around mailconfig, pages and the doctor.

Rules of the house:
- Thin: every answer is computed by mailconfig.py (documents), pages.py (HTML)
  or diagnose.errortext (the explanation); this module reads requests and
  refuses bad ones with a 4xx and a sentence, never a traceback.
- Bodies are read by hand: urlencoded UTF-8 forms only, at most
  MAX_FORM_BYTES, within the request deadline. Forms that act (explain, check)
  carry a CSRF token bound to a SameSite=Strict cookie, and a cross-site
  Origin is refused.
- The own-address check asks only this server's state (roads, grants) about
  the visitor's own address, rate-limited; it never connects anywhere.
- Runs on the front's event loop (server/app.py starts it next to the mail
  listeners), so it sees the live config after SIGHUP and the front's grants.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qsl, urlsplit

from aiohttp import web

from postvakt.address import AddressError, parse_address
from postvakt.config import Config, HostPort, IPNetwork
from postvakt.diagnose import catalogue
from postvakt.diagnose.errortext import MAX_TEXT, explain_error
from postvakt.diagnose.result import Diagnosis
from postvakt.net import parse_ip
from postvakt.policy import Grant, roads
from postvakt.policy.types import Client
from postvakt.web import mailconfig, pages
from postvakt.web.guard import ConnectionCounter, GuardedProtocol

log = logging.getLogger("postvakt.web")

# 20,000 pasted characters (the doctor reads no more), each up to 9 bytes once a
# browser percent-encodes its UTF-8 ("%E2%80%99"), plus the token fields.
MAX_FORM_BYTES = 9 * MAX_TEXT + 4096
# An idle keep-alive connection is closed after this (nginx: 75 s; pages here are one request).
KEEPALIVE_TIMEOUT = 15.0
# Explaining is cheap, but a form is for people: 30 a minute per address, 10 at once.
EXPLAIN_PER_MINUTE, EXPLAIN_BURST = 30.0, 10
# The own-address check reads the grant store: 6 a minute per address, 3 at once.
CHECK_PER_MINUTE, CHECK_BURST = 6.0, 3
# Rate-limit state kept for at most this many addresses (oldest forgotten first).
MAX_TRACKED_CLIENTS = 10_000
CSRF_COOKIE = "postvakt_csrf"
CSRF_TOKEN_BYTES = 32
# What secrets.token_urlsafe(CSRF_TOKEN_BYTES) gives: 43 URL-safe base64 characters.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")
# Where a cached page takes its visitor's token (never a valid token itself).
_TOKEN_SLOT = b"{{csrf-token}}"
# Pages rendered ahead: languages x local domains x settings; a reload starts over.
MAX_CACHED_PAGES = 64
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
# Nothing on these pages runs scripts, loads from elsewhere or may be framed.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class _OneLine(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp logs each malformed request with a traceback; one line is enough
    (and a stranger cannot fill the log with tracebacks)."""

    def exception(self, msg: object, *args: object, exc_info: object = True, **kw: object) -> None:
        reason = " ".join(str(exc_info).split()) if isinstance(exc_info, BaseException) else ""
        self.logger.info("web: %s: %s", str(msg) % args, reason[:200])


class GrantLookup(Protocol):
    def lookup(self, ip: str, now: float) -> Grant | None: ...


@dataclass(frozen=True)
class WebDeps:
    """What the web needs from the front: the live config, the bound ports, the grants."""

    config: Callable[[], Config]
    ports: Mapping[str, int]
    grants: GrantLookup


class RateLimiter:
    """A token bucket per client address."""

    def __init__(self, per_minute: float, burst: int, max_clients: int = MAX_TRACKED_CLIENTS):
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        ok = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if ok else tokens, now)
        while len(self._buckets) > self.max_clients:
            del self._buckets[next(iter(self._buckets))]
        return ok


class BadRequest(Exception):
    """A request refused with `status` and one sentence."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


# ---------------------------------------------------------------- request reading


def _in(ip: str, nets: Sequence[IPNetwork]) -> bool:
    client = parse_ip(ip)
    return client is not None and any(client.version == n.version and client in n for n in nets)


def client_address(request: web.BaseRequest, trusted: Sequence[IPNetwork]) -> str:
    """The visitor's address: the TCP peer, or what trusted proxies say it forwarded."""
    ip = request.remote or ""
    if not trusted or not _in(ip, trusted):
        return ip
    hops = [h.strip() for v in request.headers.getall("X-Forwarded-For", []) for h in v.split(",")]
    for hop in reversed(hops):
        if parse_ip(hop) is None:
            break
        ip = hop
        if not _in(hop, trusted):
            break
    return ip


def _is_https(request: web.BaseRequest, trusted: Sequence[IPNetwork]) -> bool:
    if request.secure:
        return True
    proto = request.headers.get("X-Forwarded-Proto", "").strip().lower()
    return proto == "https" and _in(request.remote or "", trusted)


async def read_body(request: web.BaseRequest, limit: int, timeout: float) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise BadRequest(413, f"413: the request body is larger than {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise BadRequest(413, f"413: the request body is larger than {limit} bytes.")
                chunks.append(chunk)
    except TimeoutError:
        raise BadRequest(408, "408: the request body did not arrive in time.") from None
    return b"".join(chunks)


async def read_form(request: web.BaseRequest, timeout: float) -> dict[str, str]:
    """A urlencoded UTF-8 form; anything else is a 4xx with the reason."""
    ctype = request.content_type
    if ctype != FORM_CONTENT_TYPE:
        raise BadRequest(
            415, f"415: send the form as {FORM_CONTENT_TYPE}, not {ctype or 'nothing'}."
        )
    charset = (request.charset or "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise BadRequest(415, f"415: the form must be UTF-8, not {charset}.")
    body = await read_body(request, MAX_FORM_BYTES, timeout)
    try:
        pairs = parse_qsl(
            body.decode("ascii"),
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=8,
        )
    except UnicodeDecodeError:
        raise BadRequest(400, "400: the form is not valid UTF-8 (percent-encoded).") from None
    except ValueError:
        raise BadRequest(400, "400: the form has too many fields.") from None
    form: dict[str, str] = {}
    for key, value in pairs:
        form.setdefault(key, value)
    return form


def choose_language(query: str | None, accept_language: str) -> str:
    """`?lang=` first, then the browser's Accept-Language (by q-value), else English."""
    if query in catalogue.LANGUAGES:
        return str(query)
    ranked: list[tuple[float, int, str]] = []
    for i, item in enumerate(accept_language.split(",")[:20]):
        tag, _, params = item.strip().partition(";")
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
        primary = tag.strip().split("-")[0].lower()
        if primary in catalogue.LANGUAGES and q > 0:
            ranked.append((-q, i, primary))
    return sorted(ranked)[0][2] if ranked else catalogue.DEFAULT_LANGUAGE


def _host_name(request: web.BaseRequest) -> str:
    host = request.host.strip().lower()
    if host.startswith("["):
        return host.partition("]")[0][1:]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def page_domain(config: Config, host: str) -> str:
    """The local domain a host name belongs to (mail.example.test -> example.test)."""
    best = ""
    for d in config.domains.local:
        if (host == d or host.endswith("." + d)) and len(d) > len(best):
            best = d
    return best or (config.domains.local[0] if config.domains.local else config.hostname)


async def _expect_form(request: web.Request) -> web.StreamResponse | None:
    """`Expect: 100-continue` with a body we would refuse: say 413 before it is sent."""
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        resp = _text(413, f"413: the request body is larger than {MAX_FORM_BYTES} bytes.")
        resp.force_close()
        return resp
    if request.headers.get("Expect", "").lower() != "100-continue":
        raise web.HTTPExpectationFailed(text="417: only Expect: 100-continue is understood.\n")
    if request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0
    return None


def _text(status: int, text: str, **headers: str) -> web.Response:
    return web.Response(
        status=status, text=text if text.endswith("\n") else text + "\n", headers=headers
    )


# ---------------------------------------------------------------- the application


class WebApp:
    def __init__(self, deps: WebDeps) -> None:
        self.deps = deps
        self.explain_limit = RateLimiter(EXPLAIN_PER_MINUTE, EXPLAIN_BURST)
        self.check_limit = RateLimiter(CHECK_PER_MINUTE, CHECK_BURST)
        self._blank: dict[tuple[str, mailconfig.MailSettings], bytes] = {}

    @property
    def config(self) -> Config:
        return self.deps.config()

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._errors], client_max_size=MAX_FORM_BYTES)
        r = app.router
        r.add_get("/", self.root)
        r.add_get("/help", self.help_get)
        r.add_post("/help", self.help_post, expect_handler=_expect_form)
        r.add_post("/help/check", self.check_post, expect_handler=_expect_form)
        r.add_get("/help/style.css", self.stylesheet)
        r.add_get("/robots.txt", self.robots)
        for path in ("/mail/config-v1.1.xml", "/.well-known/autoconfig/mail/config-v1.1.xml"):
            r.add_get(path, self.autoconfig)
        for path in ("/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml"):
            r.add_post(path, self.autodiscover)
        r.add_get("/mail/profile.mobileconfig", self.profile)
        app.on_response_prepare.append(self._headers)
        return app

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except BadRequest as e:
            resp = _text(e.status, e.text)
            if e.status in (408, 413):
                resp.force_close()  # the rest of that body is not worth waiting for
            return resp
        except web.HTTPException:
            raise
        except Exception:
            log.exception("web: %s %s failed", request.method, request.path)
            return _text(500, "500: the server failed on this request; it is logged.")

    async def _headers(self, request: web.Request, response: web.StreamResponse) -> None:
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        response.headers["Server"] = "postvakt"
        response.headers.setdefault("Cache-Control", "no-store")

    # ---------------------------------------------------------------- the help page

    def _settings(self, request: web.BaseRequest) -> mailconfig.MailSettings:
        cfg = self.config
        return mailconfig.settings_for(cfg, page_domain(cfg, _host_name(request)), self.deps.ports)

    def _page(
        self,
        request: web.BaseRequest,
        lang: str,
        status: int = 200,
        *,
        pasted: str = "",
        diagnosis: Diagnosis | None = None,
        check: pages.CheckResult | None = None,
        notice: str = "",
    ) -> web.Response:
        token = request.cookies.get(CSRF_COOKIE, "")
        fresh = not _TOKEN.fullmatch(token)
        if fresh:
            token = secrets.token_urlsafe(CSRF_TOKEN_BYTES)
        settings = self._settings(request)
        if diagnosis is None and check is None and not notice and not pasted:
            body = self._blank_page(lang, settings).replace(_TOKEN_SLOT, token.encode())
        else:
            body = pages.help_page(
                lang=lang,
                settings=settings,
                csrf=token,
                pasted=pasted,
                diagnosis=diagnosis,
                check=check,
                notice=notice,
            ).encode()
        resp = web.Response(status=status, body=body, content_type="text/html", charset="utf-8")
        if fresh:
            secure = "; Secure" if _is_https(request, self.config.web.proxy_trusted) else ""
            resp.headers["Set-Cookie"] = (
                f"{CSRF_COOKIE}={token}; HttpOnly; Path=/help; SameSite=Strict{secure}"
            )
        return resp

    def _blank_page(self, lang: str, settings: mailconfig.MailSettings) -> bytes:
        """The page as a first visit sees it, rendered once per language and settings."""
        key = (lang, settings)
        page = self._blank.get(key)
        if page is None:
            if len(self._blank) >= MAX_CACHED_PAGES:
                self._blank.clear()
            html = pages.help_page(lang=lang, settings=settings, csrf=_TOKEN_SLOT.decode())
            page = self._blank[key] = html.encode()
        return page

    async def root(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/help")

    async def help_get(self, request: web.Request) -> web.StreamResponse:
        lang = choose_language(
            request.query.get("lang"), request.headers.get("Accept-Language", "")
        )
        return self._page(request, lang)

    async def _acting_form(
        self, request: web.Request, limiter: RateLimiter
    ) -> tuple[str, dict[str, str]] | web.Response:
        """Rate limit, form, CSRF; a Response when the request is refused."""
        cfg = self.config
        fallback = choose_language(None, request.headers.get("Accept-Language", ""))
        if not limiter.allow(client_address(request, cfg.web.proxy_trusted)):
            notice = catalogue.label("web_too_many", fallback)
            resp = self._page(request, fallback, status=429, notice=notice)
            resp.headers["Retry-After"] = "60"
            return resp
        form = await read_form(request, cfg.web.request_timeout)
        lang = form.get("lang", "")
        lang = lang if lang in catalogue.LANGUAGES else fallback
        if not self._same_site(request, form):
            notice = catalogue.label("web_bad_form", lang)
            return self._page(
                request, lang, status=403, notice=notice, pasted=form.get("error", "")[:MAX_TEXT]
            )
        return lang, form

    def _same_site(self, request: web.BaseRequest, form: Mapping[str, str]) -> bool:
        if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
            return False
        origin = request.headers.get("Origin", "")
        if origin and origin != "null" and urlsplit(origin).netloc.lower() != request.host.lower():
            return False
        cookie, field = request.cookies.get(CSRF_COOKIE, ""), form.get("csrf", "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), field.encode())

    async def help_post(self, request: web.Request) -> web.StreamResponse:
        got = await self._acting_form(request, self.explain_limit)
        if isinstance(got, web.Response):
            return got
        lang, form = got
        text = form.get("error", "")[:MAX_TEXT]
        return self._page(request, lang, pasted=text, diagnosis=explain_error(text))

    async def check_post(self, request: web.Request) -> web.StreamResponse:
        got = await self._acting_form(request, self.check_limit)
        if isinstance(got, web.Response):
            return got
        lang, _ = got
        ip = client_address(request, self.config.web.proxy_trusted)
        now = time.time()
        grant = None
        if self.config.relay.pop_before_smtp > 0:
            # A shared state store (Redis) may take up to [store] timeout to answer, and
            # SQLite may wait on a writer: never on the loop that serves every other page.
            loop = asyncio.get_running_loop()
            grant = await loop.run_in_executor(None, self.deps.grants.lookup, ip, now)
        return self._page(request, lang, check=self.own_address_check(ip, grant, now))

    def own_address_check(self, ip: str, grant: Grant | None, now: float) -> pages.CheckResult:
        """The roads this server would open for the visitor's own address; no login names."""
        cfg = self.config
        window = cfg.relay.pop_before_smtp
        client = Client(ip=ip, port="submission", grant=grant, now=now)
        pop = roads.pop_before_smtp(client, cfg)
        left = math.ceil((grant.expires - now) / 60) if pop.ok and grant is not None else 0
        return pages.CheckResult(
            ip=ip,
            in_networks=roads.networks(client, cfg).ok,
            in_clients=roads.clients(client, cfg).ok,
            pop_window_minutes=math.ceil(window / 60) if window > 0 else 0,
            pop_minutes_left=left,
        )

    async def stylesheet(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            text=pages.STYLE_CSS,
            content_type="text/css",
            charset="utf-8",
            headers={"Cache-Control": "public, max-age=86400"},
        )

    async def robots(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            text=pages.ROBOTS_TXT, headers={"Cache-Control": "public, max-age=86400"}
        )

    # ---------------------------------------------------------------- mail program set-up

    def _local_domain_of(self, email: str) -> tuple[str, str]:
        """(address, domain) for an address in one of our local domains; else a 4xx."""
        if not email or len(email) > 254:
            raise BadRequest(
                400, "400: give your e-mail address, e.g. ?emailaddress=you@example.org."
            )
        try:
            addr = parse_address(email)
        except AddressError:
            raise BadRequest(400, "400: that is not an e-mail address.") from None
        if addr.is_literal or not addr.domain or not self.config.is_local_domain(addr.domain):
            raise BadRequest(
                404, f"404: {addr.domain or email} is not a mail domain of this server."
            )
        return str(addr), addr.domain

    def _settings_or_problem(self, domain: str) -> mailconfig.MailSettings:
        settings = mailconfig.settings_for(self.config, domain, self.deps.ports)
        if settings.problem is not None:
            raise BadRequest(503, mailconfig.problem_text(settings.problem))
        return settings

    async def autoconfig(self, request: web.Request) -> web.StreamResponse:
        email = request.query.get("emailaddress", "")
        if email:
            _, domain = self._local_domain_of(email)
        else:
            host = _host_name(request).removeprefix("autoconfig.")
            if not self.config.is_local_domain(host):
                raise BadRequest(404, f"404: {host} is not a mail domain of this server.")
            domain = host
        settings = self._settings_or_problem(domain)
        scheme = "https" if _is_https(request, self.config.web.proxy_trusted) else "http"
        body = mailconfig.autoconfig_xml(settings, f"{scheme}://{request.host}/help")
        return web.Response(
            body=body,
            content_type="application/xml",
            charset="utf-8",
            headers={"Cache-Control": "public, max-age=3600"},
        )

    async def autodiscover(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(
            request, mailconfig.MAX_AUTODISCOVER_REQUEST, self.config.web.request_timeout
        )
        try:
            email = mailconfig.parse_autodiscover_request(body)
        except mailconfig.AutodiscoverRequestError as e:
            return self._pox_error(400, 600, f"Invalid Request: {e}")
        try:
            address, domain = self._local_domain_of(email)
        except BadRequest as e:
            return self._pox_error(e.status, 500, "The e-mail address cannot be found.")
        settings = self._settings_or_problem(domain)
        return web.Response(
            body=mailconfig.autodiscover_xml(settings, address),
            content_type="application/xml",
            charset="utf-8",
        )

    def _pox_error(self, status: int, code: int, message: str) -> web.Response:
        return web.Response(
            status=status,
            body=mailconfig.autodiscover_error(code, message),
            content_type="application/xml",
            charset="utf-8",
        )

    async def profile(self, request: web.Request) -> web.StreamResponse:
        address, domain = self._local_domain_of(request.query.get("email", ""))
        settings = self._settings_or_problem(domain)
        return web.Response(
            body=mailconfig.mobileconfig(settings, address),
            content_type="application/x-apple-aspen-config",
            headers={"Content-Disposition": f'attachment; filename="{domain}.mobileconfig"'},
        )


# ---------------------------------------------------------------- the listener


class WebServer:
    """The web listeners, running on the caller's event loop."""

    def __init__(self, runner: web.AppRunner, servers: list[asyncio.base_events.Server]) -> None:
        self._runner = runner
        self._servers = servers

    @property
    def addresses(self) -> list[str]:
        out = []
        for srv in self._servers:
            for s in srv.sockets:
                host, port = s.getsockname()[:2]
                out.append(str(HostPort(host, port)))
        return out

    async def stop(self) -> None:
        for srv in self._servers:
            srv.close()
        await self._runner.cleanup()


async def start_web(deps: WebDeps, listen: Sequence[HostPort], request_timeout: float) -> WebServer:
    """Open the web listeners; OSError (address in use, ...) goes to the caller."""
    runner = web.AppRunner(
        WebApp(deps).application(),
        access_log=None,
        handle_signals=False,
        keepalive_timeout=KEEPALIVE_TIMEOUT,
        logger=_OneLine(log, {}),
    )
    await runner.setup()
    loop = asyncio.get_running_loop()
    counter = ConnectionCounter()
    factory = runner.server
    assert factory is not None
    servers: list[asyncio.base_events.Server] = []
    try:
        for hp in listen:
            servers.append(
                await loop.create_server(
                    lambda: GuardedProtocol(factory, counter, request_timeout),
                    hp.host,
                    hp.port,
                    reuse_address=True,
                    backlog=1024,
                )
            )
    except OSError:
        for srv in servers:
            srv.close()
        await runner.cleanup()
        raise
    return WebServer(runner, servers)
