"""SMTP replies as values.

A `Reply` is what the server says to a client: a three-digit code, an RFC 3463
enhanced status code and text. The protocol core, the policy, the queue and
delivery all speak in replies, so an error can travel from where it happens to
the wire (or to a bounce) without being re-worded on the way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# RFC 4954 §4: the server's SASL continuation, `334 SP [base64]`.
SASL_CHALLENGE = 334
# RFC 5321 §4.2 textstring is TAB and %d32-126 (UTF-8 under RFC 6531); nothing else.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


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
        """The reply's lines without CRLF; multi-line text uses `code-` continuation.

        RFC 5321 §4.2: `code "-" [text]` for every line but the last, `code
        [SP text]` for the last. A SASL challenge is the exception: RFC 4954 §4
        makes it `334 SP [base64]`, so an empty challenge is `334 ` with its
        space (clients such as s-nail take a shorter line for a dead link).
        Control characters in the text (a CR from a config file, say) become
        `?`: one reply never turns into two lines on the wire.
        """
        texts = self.text.split("\n") if self.text else [""]
        out = []
        for i, t in enumerate(texts):
            last = i == len(texts) - 1
            body = " ".join(p for p in (self.enhanced, _CONTROL.sub("?", t).rstrip(" \t")) if p)
            if body:
                out.append(f"{self.code}{' ' if last else '-'}{body}")
            elif last and self.code == SASL_CHALLENGE:
                out.append(f"{self.code} ")
            else:
                out.append(f"{self.code}" if last else f"{self.code}-")
        return out

    def encode(self) -> bytes:
        return "".join(line + "\r\n" for line in self.lines()).encode("utf-8", "replace")

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def with_text(self, text: str) -> Reply:
        return Reply(self.code, self.enhanced, text)
