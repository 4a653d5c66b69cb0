"""The /help forms against a real `postvakt serve`: CSRF, rate limits, language,
and the own-address check (roads and POP-before-SMTP grants of this server
only, never a login name)."""

from __future__ import annotations

import html
import http.client
import json
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlencode

import pytest
from click.testing import CliRunner
from engines import PrivateRedis
from web_support import ALICE, PASSWORD, Reply, WebServer, start_web_server

from postvakt.cli.diagnose import doctor
from postvakt.web.app import CHECK_BURST, EXPLAIN_BURST

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
ARTICLE_ERROR = (
    "The message could not be sent because one of the recipients was rejected by the server. "
    "The rejected e-mail address was 'friend@adatum.example'. Subject 'Hi', Account: "
    "'proseware', Server: 'smtp.proseware.example', Protocol: SMTP, Server Response: "
    "'553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)', Port: 25, "
    "Secure(SSL): No, Server Error: 553, Error Number: 0x800CCC79"
)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    # 127.0.0.1 plays the reverse proxy, so each test can be a visitor of its own.
    srv = start_web_server(
        tmp_path_factory.mktemp("web-forms"), web={"proxy_trusted": ["127.0.0.1/32"]}
    )
    try:
        yield srv
    finally:
        srv.stop()


def session(live: WebServer, visitor: str, lang: str = "en") -> tuple[str, str]:
    """GET the page as `visitor`; returns (cookie header, token in the form)."""
    r = live.get("/help", headers={"X-Forwarded-For": visitor, "Accept-Language": lang})
    assert r.status == 200
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/help" in cookie
    value = cookie.split(";")[0]
    token = re.search(r'name="csrf" value="([^"]+)"', r.text)
    assert token is not None and value == f"postvakt_csrf={token.group(1)}"
    return value, token.group(1)


def post(live: WebServer, path: str, fields: dict[str, str], visitor: str, **headers: str) -> Reply:
    return live.request(
        "POST",
        path,
        body=urlencode(fields).encode(),
        headers={**FORM, "X-Forwarded-For": visitor, **headers},
    )


def test_explain_in_english_with_the_token(live: WebServer) -> None:
    cookie, token = session(live, "198.51.100.1")
    r = post(
        live,
        "/help",
        {"csrf": token, "lang": "en", "error": ARTICLE_ERROR},
        "198.51.100.1",
        Cookie=cookie,
    )
    assert r.status == 200
    page = html.unescape(r.text)
    assert "Relaying denied: you are not logged in" in page
    assert 'turn on "My outgoing server (SMTP) requires authentication"' in page
    assert "case relay_denied_no_auth" in page
    assert '<meta name="robots" content="noindex">' in r.text
    assert r.headers["Cache-Control"] == "no-store"


def test_explain_in_swedish_from_the_form_language(live: WebServer) -> None:
    cookie, token = session(live, "198.51.100.2", lang="sv")
    r = post(
        live,
        "/help",
        {"csrf": token, "lang": "sv", "error": ARTICLE_ERROR},
        "198.51.100.2",
        Cookie=cookie,
    )
    page = html.unescape(r.text)
    assert "Vidarebefordran nekad: du är inte inloggad" in page
    assert '<html lang="sv">' in page


@pytest.mark.parametrize(
    ("why", "cookie", "token", "extra"),
    [
        ("no cookie", False, True, {}),
        ("no token", True, False, {}),
        ("wrong token", True, "x" * 43, {}),
        ("cross-site origin", True, True, {"Origin": "https://evil.example"}),
        ("cross-site fetch", True, True, {"Sec-Fetch-Site": "cross-site"}),
    ],
)
def test_forms_without_a_matching_token_or_from_elsewhere_are_403(
    live: WebServer, why: str, cookie: bool, token: bool | str, extra: dict[str, str]
) -> None:
    visitor = f"198.51.100.{10 + len(why)}"
    c, t = session(live, visitor)
    fields = {"lang": "en", "error": "550 5.7.1 Relaying denied"}
    if token is True:
        fields["csrf"] = t
    elif token:
        fields["csrf"] = str(token)
    headers = {"Cookie": c} if cookie else {}
    r = post(live, "/help", fields, visitor, **headers, **extra)
    assert r.status == 403, why
    assert "The form could not be used" in r.text
    assert "Relaying denied: you are not logged in" not in r.text
    r = post(live, "/help/check", fields, visitor, **headers, **extra)
    assert r.status == 403, why


def test_same_origin_post_is_fine(live: WebServer) -> None:
    cookie, token = session(live, "198.51.100.30")
    r = post(
        live,
        "/help",
        {"csrf": token, "lang": "en", "error": "550 5.7.1 Relaying denied"},
        "198.51.100.30",
        Cookie=cookie,
        Origin=f"http://127.0.0.1:{live.port}",
        **{"Sec-Fetch-Site": "same-origin"},
    )
    assert r.status == 200


def test_explaining_is_rate_limited_per_address(live: WebServer) -> None:
    cookie, token = session(live, "198.51.100.40")
    fields = {"csrf": token, "lang": "en", "error": "550 5.7.1 Relaying denied"}
    statuses = [
        post(live, "/help", fields, "198.51.100.40", Cookie=cookie).status
        for _ in range(EXPLAIN_BURST + 5)
    ]
    assert statuses[:EXPLAIN_BURST] == [200] * EXPLAIN_BURST
    assert 429 in statuses
    limited = post(live, "/help", fields, "198.51.100.40", Cookie=cookie)
    assert limited.status == 429 and limited.headers["Retry-After"] == "60"
    assert "Too many requests from your address" in limited.text
    # Another address is not affected.
    assert post(live, "/help", fields, "198.51.100.41", Cookie=cookie).status == 200


def pop3_login_from(live: WebServer, source_ip: str) -> None:
    ctx = live.tls_context()
    raw = socket.create_connection(
        ("127.0.0.1", live.srv.port("pop3s")), timeout=10, source_address=(source_ip, 0)
    )
    sock = ctx.wrap_socket(raw, server_hostname="mail.pv.test")
    f = sock.makefile("rb")
    try:
        assert f.readline().startswith(b"+OK")
        for line in (f"USER {ALICE}", f"PASS {PASSWORD}"):
            sock.sendall(line.encode() + b"\r\n")
            assert f.readline().startswith(b"+OK")
        sock.sendall(b"QUIT\r\n")
        f.readline()
    finally:
        f.close()
        sock.close()


def check(live: WebServer, visitor: str, lang: str = "en") -> Reply:
    cookie, token = session(live, visitor, lang)
    r = post(live, "/help/check", {"csrf": token, "lang": lang}, visitor, Cookie=cookie)
    assert r.status == 200, r.text
    return r


def test_check_sees_a_recent_pop3_login_without_naming_the_user(live: WebServer) -> None:
    pop3_login_from(live, "127.0.0.2")
    page = html.unescape(check(live, "127.0.0.2").text)
    assert "Your address, as this server sees it: 127.0.0.2" in page
    assert "A POP3 login from this address lets you send without login for" in page
    assert "sending works even without login" in page
    assert ALICE not in page and "alice" not in page


def test_check_of_an_outside_address_says_login_is_needed(live: WebServer) -> None:
    page = html.unescape(check(live, "127.0.0.3", lang="sv").text)
    assert "Din adress, som den här servern ser den: 127.0.0.3" in page
    assert "Ingen POP3-inloggning från den här adressen de senaste 30 minuterna" in page
    assert "Härifrån kräver det inloggning att skicka" in page


def test_check_of_our_own_network(live: WebServer) -> None:
    page = html.unescape(check(live, "127.0.0.1").text)
    assert "It is in the provider's own network" in page


def test_forwarded_for_is_ignored_from_an_untrusted_peer(live: WebServer) -> None:
    """Only 127.0.0.1 is a trusted proxy: 127.0.0.2 cannot claim to be our network."""
    conn = http.client.HTTPConnection(
        "127.0.0.1", live.port, timeout=10, source_address=("127.0.0.2", 0)
    )
    try:
        conn.request("GET", "/help", headers={"X-Forwarded-For": "127.0.0.1"})
        r = conn.getresponse()
        cookie = r.headers["Set-Cookie"].split(";")[0]
        token = re.search(r'name="csrf" value="([^"]+)"', r.read().decode())
        assert token is not None
        body = urlencode({"csrf": token.group(1), "lang": "en"})
        conn.request(
            "POST",
            "/help/check",
            body=body,
            headers={**FORM, "Cookie": cookie, "X-Forwarded-For": "127.0.0.1"},
        )
        page = html.unescape(conn.getresponse().read().decode())
    finally:
        conn.close()
    assert "as this server sees it: 127.0.0.2" in page
    assert "It is not in the provider's own network" in page


def test_check_is_rate_limited(live: WebServer) -> None:
    cookie, token = session(live, "198.51.100.50")
    statuses = [
        post(
            live, "/help/check", {"csrf": token, "lang": "en"}, "198.51.100.50", Cookie=cookie
        ).status
        for _ in range(CHECK_BURST + 3)
    ]
    assert statuses[:CHECK_BURST] == [200] * CHECK_BURST and 429 in statuses


def test_language_from_accept_language_and_the_switch(live: WebServer) -> None:
    sv = live.get("/help", headers={"Accept-Language": "sv-SE,sv;q=0.9,en;q=0.8"})
    assert "<h1>Varför kan jag inte skicka?</h1>" in sv.text
    assert 'href="/help?lang=en" lang="en" hreflang="en">English</a>' in sv.text
    en = live.get("/help?lang=en", headers={"Accept-Language": "sv"})
    assert "<h1>Why can&#x27;t I send?</h1>" in en.text
    assert '<meta name="robots" content="index, follow">' in en.text


def test_the_page_shows_the_live_secure_ports_and_never_port_25(live: WebServer) -> None:
    page = live.get("/help?lang=en").text
    for kind in ("submission", "submissions", "pop3", "pop3s"):
        assert str(live.srv.port(kind)) in page
    assert str(live.srv.port("smtp")) not in page


def test_robots_stylesheet_and_root(live: WebServer) -> None:
    robots = live.get("/robots.txt")
    assert (
        robots.status == 200 and "Allow: /help" in robots.text and "Disallow: /mail/" in robots.text
    )
    css = live.get("/help/style.css")
    assert css.status == 200 and css.headers["Content-Type"].startswith("text/css")
    root = live.get("/")
    assert root.status == 302 and root.headers["Location"] == "/help"


def test_pasted_markup_is_shown_as_text(live: WebServer) -> None:
    cookie, token = session(live, "198.51.100.60")
    evil = "550 5.7.1 <script>alert(1)</script> Relaying denied </textarea><b>x</b>"
    r = post(
        live, "/help", {"csrf": token, "lang": "en", "error": evil}, "198.51.100.60", Cookie=cookie
    )
    assert r.status == 200
    assert "<script>" not in r.text and "</textarea><b>" not in r.text
    assert "&lt;script&gt;" in r.text


def test_each_first_visit_gets_its_own_token(live: WebServer) -> None:
    """The page is rendered once per language; the token must still be per visitor."""
    tokens = {session(live, f"198.51.100.{70 + i}")[1] for i in range(5)}
    assert len(tokens) == 5
    assert "{{csrf-token}}" not in live.get("/help").text


@pytest.mark.parametrize("lang", ["en", "sv"])
def test_the_page_says_what_the_doctor_says(live: WebServer, lang: str) -> None:
    """One catalogue: the page's title, advice, explanation and findings are the
    words `postvakt doctor --explain-error --json` prints for the same paste."""
    r = CliRunner().invoke(doctor, ["--explain-error", ARTICLE_ERROR, "--json", "--lang", lang])
    cli = json.loads(r.stdout)
    visitor = f"198.51.100.{90 + len(lang)}"
    cookie, token = session(live, visitor, lang)
    page = html.unescape(
        post(
            live,
            "/help",
            {"csrf": token, "lang": lang, "error": ARTICLE_ERROR},
            visitor,
            Cookie=cookie,
        ).text
    )
    assert cli["lang"] == lang and cli["case"] == "relay_denied_no_auth"
    for text in [cli["title"], cli["explanation"], *cli["advice"]]:
        assert text in page, text
    for finding in cli["findings"]:
        assert finding["text"] in page, finding


def test_a_stalled_state_store_holds_the_check_not_the_other_pages(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The own-address check reads grants from the state store; with Redis stalled it
    waits up to [store] timeout, in a thread: the page keeps being served meanwhile."""
    root = tmp_path_factory.mktemp("web-stalled")
    redis = PrivateRedis(root / "redis").start()
    srv = start_web_server(
        root,
        web={"proxy_trusted": ["127.0.0.1/32"]},
        store={"state": redis.url, "timeout": "6s"},
        relay={"pop_before_smtp": "30m"},
    )
    try:
        cookie, token = session(srv, "198.51.100.70")
        assert redis.proc is not None
        redis.proc.send_signal(signal.SIGSTOP)
        answers: list[Reply] = []
        check = threading.Thread(
            target=lambda: answers.append(
                post(
                    srv,
                    "/help/check",
                    {"csrf": token, "lang": "en"},
                    "198.51.100.70",
                    Cookie=cookie,
                )
            )
        )
        check.start()
        time.sleep(1.0)  # let the check reach the stalled store
        assert srv.get("/help?lang=en").status == 200
        assert check.is_alive(), "the check should still be waiting on the stalled store"
        redis.proc.send_signal(signal.SIGCONT)
        check.join(30)
        assert answers and answers[0].status == 200, answers
    finally:
        if redis.proc is not None:
            redis.proc.send_signal(signal.SIGCONT)
        srv.stop()
        redis.stop()
