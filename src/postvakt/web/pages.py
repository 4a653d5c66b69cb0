"""The help page as HTML: every word from the diagnose catalogue, every value escaped.

Rules of the house:
- Pure: values in, a str out. No second copy of any text: the explanation,
  the advice and the page's own words all come from diagnose/catalogue.py,
  in the visitor's language.
- Works without JavaScript (there is none) and with one stylesheet; every
  field has a label; the result is a section with a heading that screen
  readers can jump to; the language switch is plain links with hreflang.
- Shows only what the visitor typed and what this server says about the
  visitor's own address; nothing about anybody else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from postvakt.diagnose import catalogue
from postvakt.diagnose.result import Diagnosis
from postvakt.web.mailconfig import Endpoint, MailSettings, Problem, Security

LANGUAGE_NAMES = {"en": "English", "sv": "Svenska"}
STYLESHEET = "/help/style.css"
FORM_FIELD_MAX = 20_000  # the doctor reads no more (errortext.MAX_TEXT)


@dataclass(frozen=True)
class CheckResult:
    """What this server knows about the visitor's own address (and nothing else)."""

    ip: str
    in_networks: bool
    in_clients: bool
    pop_window_minutes: int  # 0 = POP-before-SMTP is off
    pop_minutes_left: int  # 0 = no fresh POP3 login from this address

    @property
    def can_send_without_login(self) -> bool:
        return self.in_networks or self.in_clients or self.pop_minutes_left > 0


def _t(key: str, lang: str, **params: object) -> str:
    return escape(catalogue.label(key, lang, **params))


def _security_words(ep: Endpoint, lang: str) -> str:
    return catalogue.label("ssl" if ep.security is Security.SSL else "starttls", lang)


def _settings_table(settings: MailSettings, lang: str) -> str:
    problem = settings.problem
    if problem is not None:
        key = "web_no_secure_send" if problem is Problem.NO_SECURE_SEND else "web_no_incoming"
        return f'<p class="notice">{_t(key, lang)}</p>'
    rows = []
    for title_key, endpoints in (
        ("web_outgoing", settings.outgoing),
        ("web_incoming", settings.incoming),
    ):
        alternatives = f" {_t('web_or', lang)} ".join(
            f"{ep.port} ({escape(_security_words(ep, lang))})" for ep in endpoints
        )
        rows.append(
            f'<tr><th scope="row">{_t(title_key, lang)}</th>'
            f"<td>{escape(endpoints[0].host)}</td><td>{alternatives}</td></tr>"
        )
    return (
        f"<p>{_t('web_settings_intro', lang)}</p>"
        "<table><thead><tr><td></td>"
        f'<th scope="col">{_t("web_server", lang)}</th>'
        f'<th scope="col">{_t("web_port", lang)} / {_t("web_security", lang)}</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
        f"<p>{_t('web_username', lang)}: {_t('web_username_value', lang)}. "
        f"{_t('web_login', lang)}: {_t('web_login_value', lang)}.</p>"
    )


def _result(d: Diagnosis, lang: str) -> str:
    t = catalogue.case_text(d.case, lang, d.params)
    parts = [
        '<section id="result" class="result" aria-labelledby="result-h" tabindex="-1">',
        f'<h2 id="result-h">{escape(t.title)}</h2>',
    ]
    if d.confidence is not None:
        parts.append(
            f'<p class="confidence"><strong>{_t("confidence", lang)}:</strong> '
            f"{_t('confidence_' + d.confidence.value, lang)}</p>"
        )
    if t.advice:
        parts.append(
            f'<h3>{_t("web_change_this", lang)}</h3><p class="fix">{escape(t.advice[0])}</p>'
        )
    parts.append(f"<h3>{_t('meaning', lang)}</h3><p>{escape(t.explanation)}</p>")
    if len(t.advice) > 1:
        items = "".join(f"<li>{escape(a)}</li>" for a in t.advice[1:])
        parts.append(f"<h3>{_t('web_also', lang)}</h3><ul>{items}</ul>")
    if d.findings:
        items = "".join(
            f'<li class="{escape(f.severity)}">{escape(f.text(lang))}</li>' for f in d.findings
        )
        parts.append(f"<h3>{_t('findings', lang)}</h3><ul>{items}</ul>")
    parts.append(f'<p class="case">{_t("web_case_id", lang, case=d.case)}</p></section>')
    return "".join(parts)


def _check(c: CheckResult, lang: str) -> str:
    lines = [_t("web_check_ip", lang, ip=c.ip)]
    lines.append(_t("web_check_network_yes" if c.in_networks else "web_check_network_no", lang))
    if c.in_clients:
        lines.append(_t("web_check_client_yes", lang))
    if c.pop_window_minutes:
        if c.pop_minutes_left:
            lines.append(_t("web_check_pop_yes", lang, minutes=c.pop_minutes_left))
        else:
            lines.append(_t("web_check_pop_no", lang, minutes=c.pop_window_minutes))
    verdict = "web_check_works" if c.can_send_without_login else "web_check_needs_login"
    items = "".join(f"<li>{line}</li>" for line in lines)
    return (
        '<section id="check-result" class="result" aria-labelledby="check-result-h" '
        'tabindex="-1">'
        f'<h3 id="check-result-h">{_t("web_check_title", lang)}</h3><ul>{items}</ul>'
        f'<p class="fix">{_t(verdict, lang)}</p></section>'
    )


def _language_nav(lang: str) -> str:
    links = []
    for code, name in LANGUAGE_NAMES.items():
        current = ' aria-current="page"' if code == lang else ""
        links.append(
            f'<a href="/help?lang={code}" lang="{code}" hreflang="{code}"{current}>{name}</a>'
        )
    return f'<nav aria-label="{_t("web_language", lang)}">{" · ".join(links)}</nav>'


def help_page(
    *,
    lang: str,
    settings: MailSettings,
    csrf: str,
    pasted: str = "",
    diagnosis: Diagnosis | None = None,
    check: CheckResult | None = None,
    notice: str = "",
) -> str:
    """The whole page; a result (or a check) is shown above the form when there is one."""
    indexable = diagnosis is None and check is None and not notice
    hidden = (
        f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
        f'<input type="hidden" name="lang" value="{escape(lang)}">'
    )
    alternates = "".join(
        f'<link rel="alternate" hreflang="{code}" href="/help?lang={code}">'
        for code in LANGUAGE_NAMES
    )
    body: Sequence[str] = (
        f"<header>{_language_nav(lang)}</header>",
        "<main>",
        f"<h1>{_t('web_title', lang)}</h1>",
        f"<p>{_t('web_intro', lang)}</p>",
        f'<p class="notice" role="alert">{escape(notice)}</p>' if notice else "",
        _result(diagnosis, lang) if diagnosis is not None else "",
        '<form method="post" action="/help#result">',
        hidden,
        f'<label for="error">{_t("web_error_label", lang)}</label>',
        f'<p id="error-hint" class="hint">{_t("web_error_hint", lang)}</p>',
        f'<textarea id="error" name="error" rows="8" cols="70" maxlength="{FORM_FIELD_MAX}" '
        f'required aria-describedby="error-hint">{escape(pasted)}</textarea>',
        f'<p><button type="submit">{_t("web_submit", lang)}</button></p>',
        "</form>",
        '<section aria-labelledby="settings-h">',
        f'<h2 id="settings-h">{_t("web_settings", lang, domain=settings.domain)}</h2>',
        _settings_table(settings, lang),
        "</section>",
        '<section aria-labelledby="check-h">',
        f'<h2 id="check-h">{_t("web_check_title", lang)}</h2>',
        f"<p>{_t('web_check_intro', lang)}</p>",
        _check(check, lang) if check is not None else "",
        f'<form method="post" action="/help/check#check-result">{hidden}',
        f'<p><button type="submit">{_t("web_check_submit", lang)}</button></p></form>',
        "</section>",
        "" if settings.problem else _profile_form(lang),
        "</main>",
    )
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="{escape(lang)}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_t('web_title', lang)} – {escape(settings.domain)}</title>"
        f'<meta name="description" content="{_t("web_description", lang)}">'
        f'<meta name="robots" content="{"index, follow" if indexable else "noindex"}">'
        f'<link rel="stylesheet" href="{STYLESHEET}">{alternates}'
        f"</head><body>{''.join(body)}</body></html>\n"
    )


def _profile_form(lang: str) -> str:
    return (
        '<section aria-labelledby="profile-h">'
        f'<h2 id="profile-h">{_t("web_profile_title", lang)}</h2>'
        f"<p>{_t('web_profile_intro', lang)}</p>"
        '<form method="get" action="/mail/profile.mobileconfig">'
        f'<label for="email">{_t("web_email_label", lang)}</label> '
        '<input type="email" id="email" name="email" required autocomplete="email" '
        'maxlength="254"> '
        f'<button type="submit">{_t("web_profile_submit", lang)}</button></form></section>'
    )


# One stylesheet: dark text on white (contrast above 15:1), links and focus
# rings that keep 4.5:1, a readable measure, no layout that needs scripts.
STYLE_CSS = """\
:root { color: #1b1b1b; background: #ffffff; font: 1.05rem/1.55 system-ui, sans-serif; }
body { margin: 0 auto; max-width: 44rem; padding: 1rem 1.25rem 3rem; }
header nav { text-align: right; font-size: 0.95rem; }
a { color: #0a4ea8; }
a[aria-current="page"] { font-weight: bold; text-decoration: none; color: #1b1b1b; }
h1 { font-size: 1.8rem; margin: 0.5rem 0 0.75rem; }
h2 { font-size: 1.3rem; margin-top: 2rem; }
label { display: block; font-weight: bold; margin-top: 1rem; }
.hint { margin: 0.2rem 0 0.4rem; color: #3d3d3d; }
textarea, input { width: 100%; box-sizing: border-box; font: inherit; padding: 0.5rem;
  border: 2px solid #4a4a4a; border-radius: 4px; color: #1b1b1b; background: #ffffff; }
input[type="email"] { max-width: 26rem; }
button { font: inherit; font-weight: bold; padding: 0.55rem 1.2rem; border: 0;
  border-radius: 4px; color: #ffffff; background: #0a4ea8; cursor: pointer; margin-top: 0.5rem; }
button:hover { background: #083d84; }
a:focus, button:focus, textarea:focus, input:focus, .result:focus {
  outline: 3px solid #b34700; outline-offset: 2px; }
.result { border-left: 6px solid #0a4ea8; background: #f2f6fb; padding: 0.5rem 1rem;
  margin: 1.5rem 0; }
.result h2, .result h3 { margin: 0.6rem 0 0.3rem; }
.fix { font-weight: bold; }
.notice { border-left: 6px solid #b34700; background: #fff4ec; padding: 0.5rem 1rem; }
li.problem, li.warning { font-weight: bold; }
.case { color: #3d3d3d; font-size: 0.9rem; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 0.35rem 0.5rem; border-bottom: 1px solid #c8c8c8; }
"""

ROBOTS_TXT = """\
User-agent: *
Allow: /help
Disallow: /help/check
Disallow: /mail/
Disallow: /autodiscover/
Disallow: /Autodiscover/
Disallow: /.well-known/
"""
