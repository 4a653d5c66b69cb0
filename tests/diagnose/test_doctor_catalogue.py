"""The catalogue: every id in every language, the same placeholders in each."""

from __future__ import annotations

import re
import string

import pytest

from postvakt.diagnose import catalogue as c

# The cases the doctor must be able to tell apart (the list).
REQUIRED_CASES = {
    "relay_denied_no_auth",
    "auth_not_used",
    "auth_failed",
    "auth_requires_tls",
    "sender_not_owned",
    "sender_not_logged_in",
    "recipient_unknown",
    "port_blocked",
    "tls_problem",
    "ok",
    "pop_before_smtp",
    "not_recognised",
}


def fields(text: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(text) if f}


def test_required_cases_exist() -> None:
    assert REQUIRED_CASES <= set(c.CASES)


@pytest.mark.parametrize("case", sorted(c.CASES))
def test_case_in_every_language_with_same_placeholders(case: str) -> None:
    en = c.CASES[case]["en"]
    for lang in c.LANGUAGES:
        t = c.CASES[case][lang]
        assert t.title and t.explanation
        assert len(t.advice) == len(en.advice)
        assert fields(t.title) == fields(en.title)
        assert fields(t.explanation) == fields(en.explanation)
        for a, b in zip(t.advice, en.advice, strict=True):
            assert fields(a) == fields(b)


@pytest.mark.parametrize(
    "table", [c.FINDINGS, c.LABELS, c.CLIENT_ERRORS], ids=["findings", "labels", "client_errors"]
)
def test_every_entry_in_every_language(table: dict[str, dict[str, str]]) -> None:
    for key, entry in table.items():
        for lang in c.LANGUAGES:
            assert entry.get(lang), (key, lang)
            assert fields(entry[lang]) == fields(entry["en"]), (key, lang)


def test_client_error_numbers_are_normalised() -> None:
    assert all(re.fullmatch(r"0x[0-9A-F]{8}", n) for n in c.CLIENT_ERRORS)
    assert c.client_error_meaning("0x800ccc79", "en") == c.CLIENT_ERRORS["0x800CCC79"]["en"]


def test_unknown_placeholder_stays_visible_instead_of_failing() -> None:
    assert c.fmt("a {known} {unknown}", {"known": 1}) == "a 1 {unknown}"


def test_label_references_are_translated() -> None:
    t = c.finding_text(
        "attempt",
        "sv",
        {"port": 587, "security": "@starttls", "auth": "@with_login", "outcome": "@accepted_short"},
    )
    assert t == "Port 587, STARTTLS, med inloggning: godkänt"


def test_missing_language_falls_back_to_english() -> None:
    t = c.case_text("ok", "xx", {"server": "s", "sender": "a", "rcpt": "b"})
    assert t.title == c.CASES["ok"]["en"].title


def test_every_case_the_doctor_or_explain_can_name_is_in_the_catalogue() -> None:
    from postvakt.diagnose import doctor, errortext

    named = {row[3] for row in doctor.CASE_TABLE} | {"ok", "pop_before_smtp", "auth_requires_tls"}
    named |= set(errortext._KIND_CASES.values()) | {c for c, _ in errortext._NUMBER_CASES.values()}
    assert named <= set(c.CASES), named - set(c.CASES)
