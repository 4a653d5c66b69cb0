"""The help page in a real browser: Debian's chromium driven by Playwright, with
JavaScript turned off (the page has none and must not need it).

Screenshots of each explained error are kept as test artifacts: in the
directory named by POSTVAKT_TEST_ARTIFACTS when set (CI keeps that folder),
else in pytest's temporary directory for this run (printed in the report
header of `pytest -v`; e.g. /tmp/pytest-of-$USER/pytest-N/screenshots0).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from web_support import WebServer, start_web_server

pytest.importorskip(
    "playwright.sync_api", reason="install the 'browser' extra: pip install -e '.[browser]'"
)
from playwright.sync_api import Browser, Page, sync_playwright  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip("Debian's chromium package is not installed", allow_module_level=True)

# Debian's chromium, headless, with nothing that phones out or updates itself.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

ENGLISH_ARTICLE = (
    "The message could not be sent because one of the recipients was rejected by the server. "
    "The rejected e-mail address was 'someone@example.com'. Subject 'Test', Account: "
    "'mail.example.net', Server: 'smtp.example.net', Protocol: SMTP, Server Response: "
    "'550 <someone@example.com>... Relaying denied', Port: 25, Secure(SSL): No, "
    "Server Error: 550, Error Number: 0x800CCC79"
)
SWEDISH_ARTICLE = (
    "Meddelandet kunde inte skickas eftersom en av mottagarna avvisades av servern. "
    "Den avvisade e-postadressen var 'someone@example.com'. Ämne 'Test', Konto: "
    "'mail.example.net', Server: 'smtp.example.net', Protokoll: SMTP, Server Response: "
    "'550 <someone@example.com>... Vidarebefordran nekad', Port: 25, Säker (SSL): Nej, "
    "Serverfel: 550, Felnummer: 0x800CCC79"
)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    named = os.environ.get("POSTVAKT_TEST_ARTIFACTS")
    path = Path(named) if named else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    srv = start_web_server(tmp_path_factory.mktemp("web-browser"))
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def no_js_page(browser: Browser, locale: str) -> Page:
    context = browser.new_context(java_script_enabled=False, locale=locale)
    return context.new_page()


def explain(page: Page, base: str, text: str, label: str, button: str) -> None:
    page.goto(f"{base}/help")
    page.get_by_label(label).fill(text)
    page.get_by_role("button", name=button).click()
    page.wait_for_selector("#result-h")


def test_english_article_error_is_explained_without_javascript(
    browser: Browser, live: WebServer, artifacts: Path
) -> None:
    page = no_js_page(browser, "en-US")
    base = f"http://127.0.0.1:{live.port}"
    explain(page, base, ENGLISH_ARTICLE, "The error message", "Explain the error")
    result = page.locator("#result")
    assert result.locator("h2").inner_text().startswith("Relaying denied: you are not logged in")
    fix = result.locator("p.fix").inner_text()
    assert 'turn on "My outgoing server (SMTP) requires authentication"' in fix
    text = result.inner_text()
    assert "How sure: sure" in text
    assert "Port 25 without encryption" in text
    assert "relay_denied_no_auth" in text
    # The pasted text stays in the box, to fix and send again.
    assert page.get_by_label("The error message").input_value() == ENGLISH_ARTICLE
    page.screenshot(path=str(artifacts / "help-en.png"), full_page=True)
    assert (artifacts / "help-en.png").stat().st_size > 10_000
    page.context.close()


def test_swedish_article_error_is_explained_in_swedish(
    browser: Browser, live: WebServer, artifacts: Path
) -> None:
    page = no_js_page(browser, "sv-SE")
    base = f"http://127.0.0.1:{live.port}"
    explain(page, base, SWEDISH_ARTICLE, "Felmeddelandet", "Förklara felet")
    assert page.locator("html").get_attribute("lang") == "sv"
    result = page.locator("#result")
    assert (
        result.locator("h2").inner_text().startswith("Vidarebefordran nekad: du är inte inloggad")
    )
    fix = result.locator("p.fix").inner_text()
    assert 'slå på "Servern för utgående e-post (SMTP) kräver autentisering"' in fix
    text = result.inner_text()
    assert "Hur säker: säker" in text
    assert "Port 25 utan kryptering" in text
    page.screenshot(path=str(artifacts / "help-sv.png"), full_page=True)
    assert (artifacts / "help-sv.png").stat().st_size > 10_000
    page.context.close()


def test_language_switch_and_own_address_check_work_without_javascript(
    browser: Browser, live: WebServer
) -> None:
    page = no_js_page(browser, "en-US")
    page.goto(f"http://127.0.0.1:{live.port}/help")
    assert page.locator("h1").inner_text() == "Why can't I send?"
    assert page.locator("script").count() == 0
    page.get_by_role("link", name="Svenska").click()
    assert page.locator("h1").inner_text() == "Varför kan jag inte skicka?"
    page.get_by_role("button", name="Kontrollera").click()
    check = page.locator("#check-result").inner_text()
    assert "Din adress, som den här servern ser den: 127.0.0.1" in check
    assert "leverantörens eget nät" in check
    page.context.close()


def _contrast(fg: str, bg: str) -> float:
    def lum(rgb: str) -> float:
        parts = [int(x) for x in rgb[rgb.index("(") + 1 : rgb.index(")")].split(",")[:3]]
        out = []
        for c in parts:
            v = c / 255
            out.append(v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4)
        return 0.2126 * out[0] + 0.7152 * out[1] + 0.0722 * out[2]

    a, b = sorted((lum(fg), lum(bg)), reverse=True)
    return (a + 0.05) / (b + 0.05)


def test_labels_and_contrast(browser: Browser, live: WebServer) -> None:
    """Every field has a label; text and buttons keep WCAG AA contrast (4.5:1)."""
    context = browser.new_context(locale="en-US")
    page = context.new_page()
    page.goto(f"http://127.0.0.1:{live.port}/help")
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input:not([type=hidden]), textarea, select')]
              .filter(el => !(el.id && document.querySelector(`label[for="${el.id}"]`)))
              .map(el => el.name)"""
    )
    assert unlabelled == []
    colours = page.evaluate(
        """() => {
            const bg = el => { for (; el; el = el.parentElement) {
                const c = getComputedStyle(el).backgroundColor;
                if (c !== 'rgba(0, 0, 0, 0)') return c; } return 'rgb(255, 255, 255)'; };
            return ['p', 'label', '.hint', 'button', 'a', 'th', 'textarea'].map(sel => {
                const el = document.querySelector(sel);
                return [sel, getComputedStyle(el).color, bg(el)];
            });
        }"""
    )
    for selector, fg, bg in colours:
        assert _contrast(fg, bg) >= 4.5, (selector, fg, bg)
    context.close()


def test_one_stylesheet_and_nothing_from_elsewhere(browser: Browser, live: WebServer) -> None:
    """The page and its result load one stylesheet from this server and nothing
    else: no script, no inline style, no image or font from another origin."""
    page = no_js_page(browser, "en-US")
    base = f"http://127.0.0.1:{live.port}"
    loaded: list[tuple[str, str, int]] = []
    page.on(
        "response",
        lambda r: loaded.append((r.request.resource_type, r.url, r.status)),
    )
    explain(page, base, ENGLISH_ARTICLE, "The error message", "Explain the error")
    assert page.locator('link[rel="stylesheet"]').count() == 1
    assert page.locator("script, style, [style], iframe, object, embed").count() == 0
    assert {urlsplit(url).netloc for _, url, _ in loaded} == {f"127.0.0.1:{live.port}"}
    sheets = [(url, status) for kind, url, status in loaded if kind == "stylesheet"]
    assert sheets and {u for u, _ in sheets} == {f"{base}/help/style.css"}, loaded
    assert all(status == 200 for _, status in sheets)
    # The sheet is applied (the browser's default body margin is 8px).
    assert page.evaluate("getComputedStyle(document.body).margin") != "8px"
    page.context.close()
