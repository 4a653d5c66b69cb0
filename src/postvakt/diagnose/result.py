"""What a diagnosis is: a case, the findings behind it, the probes that found them.

Values only (no IO), shared by the doctor, `--explain-error` and the renderers,
so text and `--json` always tell the same story.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from postvakt.diagnose import catalogue

# Severity of a finding, from harmless to the reason the mail fails.
SEVERITIES = ("ok", "info", "warning", "problem")

# Exit codes: 0 = the mail would be accepted (or an error was explained),
# 1 = it would not, 2 = usage errors and texts that were not recognised (click uses 2 too).
EXIT_ACCEPTED = 0
EXIT_REFUSED = 1
EXIT_NOT_RECOGNISED = 2


class Confidence(StrEnum):
    """How sure a reading of a pasted error is (a live probe needs no such word).

    HIGH: the server's own words name the case. MEDIUM: its words are unknown,
    but the reply code, the stage and the client's port and encryption agree.
    LOW: one clue alone (an error number, a bare code).
    """

    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


@dataclass(frozen=True)
class Finding:
    id: str
    severity: str
    params: dict[str, Any] = field(default_factory=dict)

    def text(self, lang: str) -> str:
        return catalogue.finding_text(self.id, lang, self.params)


@dataclass(frozen=True)
class Probe:
    """One conversation with a server, as it happened."""

    name: str
    host: str
    port: int
    security: str  # none | starttls | ssl
    login: str | None
    outcome: str  # a reply kind (classify.py) or a network error kind
    stage: str  # connect | banner | ehlo | starttls | auth | mail | rcpt | pop3
    reply: str
    transcript: tuple[str, ...]


@dataclass(frozen=True)
class Diagnosis:
    case: str
    accepted: bool
    params: dict[str, Any]
    findings: tuple[Finding, ...] = ()
    probes: tuple[Probe, ...] = ()
    exit_code: int = EXIT_REFUSED
    confidence: Confidence | None = None

    def to_json(self, lang: str) -> str:
        t = catalogue.case_text(self.case, lang, self.params)
        doc = {
            "case": self.case,
            "accepted": self.accepted,
            "exit_code": self.exit_code,
            "lang": lang,
            "confidence": self.confidence.value if self.confidence else None,
            "title": t.title,
            "explanation": t.explanation,
            "advice": list(t.advice),
            "params": catalogue.localise(self.params, lang),
            "findings": [
                {
                    "id": f.id,
                    "severity": f.severity,
                    "text": f.text(lang),
                    "params": catalogue.localise(f.params, lang),
                }
                for f in self.findings
            ],
            "probes": [
                {
                    "name": p.name,
                    "host": p.host,
                    "port": p.port,
                    "security": p.security,
                    "login": p.login,
                    "outcome": p.outcome,
                    "stage": p.stage,
                    "reply": p.reply,
                    "transcript": list(p.transcript),
                }
                for p in self.probes
            ],
        }
        return json.dumps(doc, indent=2, ensure_ascii=False, default=str)

    def to_text(self, lang: str, *, verbose: bool = False, probing: bool = True) -> str:
        t = catalogue.case_text(self.case, lang, self.params)
        lab = catalogue.label
        out = [f"{lab('diagnosis', lang)}: {t.title}  [{self.case}]"]
        if self.confidence is not None:
            out.append(
                f"{lab('confidence', lang)}: {lab('confidence_' + self.confidence.value, lang)}"
            )
        out.append("")
        out += [f"{lab('meaning', lang)}:", f"  {t.explanation}", ""]
        if t.advice:
            out.append(f"{lab('advice', lang)}:")
            out += [f"  - {a}" for a in t.advice]
            out.append("")
        if self.findings:
            out.append(f"{lab('findings', lang)}:")
            marks = {"ok": "ok  ", "info": "    ", "warning": "!   ", "problem": "!!  "}
            out += [f"  {marks.get(f.severity, '    ')}{f.text(lang)}" for f in self.findings]
            out.append("")
        if verbose and self.probes:
            out.append(f"{lab('transcript', lang)}:")
            for p in self.probes:
                out.append(f"  [{p.name}] {p.host}:{p.port} ({p.security})")
                out += [f"    {line}" for line in p.transcript]
            out.append("")
        if probing:
            out.append(lab("accepted" if self.accepted else "refused", lang))
            out.append(lab("no_data", lang))
        return "\n".join(out).rstrip() + "\n"
