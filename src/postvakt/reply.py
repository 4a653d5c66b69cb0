"""SMTP replies as values.

A `Reply` is what the server says to a client: a three-digit code, an RFC 3463
enhanced status code and text. The protocol core, the policy, the queue and
delivery all speak in replies, so an error can travel from where it happens to
the wire (or to a bounce) without being re-worded on the way.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    code: int
    enhanced: str = ""
    text: str = ""

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    @property
    def positive(self) -> bool:
        return self.code < 400

    def lines(self) -> list[str]:
        """The reply's lines without CRLF; multi-line text uses `code-` continuation."""
        texts = self.text.split("\n") if self.text else [""]
        out = []
        for i, t in enumerate(texts):
            sep = " " if i == len(texts) - 1 else "-"
            body = f"{self.enhanced} {t}" if self.enhanced else t
            out.append(f"{self.code}{sep}{body}".rstrip())
        return out

    def encode(self) -> bytes:
        return "".join(line + "\r\n" for line in self.lines()).encode("utf-8", "replace")

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def with_text(self, text: str) -> Reply:
        return Reply(self.code, self.enhanced, text)
