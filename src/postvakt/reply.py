"""SMTP replies as values.

A `Reply` is what the server says to a client: a three-digit code, an RFC 3463
enhanced status code and text. The protocol core, the policy, the queue and
delivery all speak in replies, so an error can travel from where it happens to
the wire (or to a bounce) without being re-worded on the way.

The one reply parser is here too (`reply_line_error`, `parse_reply`): the
delivery client and the doctor's probe read a peer's replies the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# RFC 4954 §4: the server's SASL continuation, `334 SP [base64]`.
SASL_CHALLENGE = 334
# RFC 5321 §4.2 textstring is TAB and %d32-126 (UTF-8 under RFC 6531); nothing else.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# RFC 5321 §4.2: Reply-code = %x32-35 %x30-35 %x30-39, then SP or "-" or the end.
_REPLY_LINE = re.compile(r"^([2-5][0-5][0-9])([ -]|$)")
# RFC 3463 §2: class "." subject "." detail, at the start of a reply line's text (RFC 2034 §4).
_ENHANCED = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})(?: |$)")


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
        return list(self._lines())

    def _lines(self) -> tuple[str, ...]:
        # Made once per reply and kept in the instance: most replies are constants
        # sent to every client (not a functools.cached_property, whose lock costs more).
        made: tuple[str, ...] | None = self.__dict__.get("_made")
        if made is None:
            made = self.__dict__["_made"] = self._make_lines()
        return made

    def _make_lines(self) -> tuple[str, ...]:
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
        return tuple(out)

    def encode(self) -> bytes:
        wire: bytes | None = self.__dict__.get("_wire")
        if wire is None:
            text = "".join(line + "\r\n" for line in self._lines())
            wire = self.__dict__["_wire"] = text.encode("utf-8", "replace")
        return wire

    def __str__(self) -> str:
        return "\n".join(self._lines())

    def with_text(self, text: str) -> Reply:
        return Reply(self.code, self.enhanced, text)


def reply_line_error(line: str, first: str | None) -> str | None:
    """Why one reply line breaks RFC 5321 §4.2 (None: it does not). `first`
    is the reply's first line when this one continues it: every line of one
    reply must carry the same code, or the reply means nothing certain."""
    m = _REPLY_LINE.match(line)
    if m is None:
        return "not a reply line"
    if first is not None and line[:3] != first[:3]:
        return f"code {line[:3]} in a reply that began with {first[:3]}"
    return None


def parse_reply(lines: list[str]) -> Reply:
    """The lines of one reply, without CRLF, -> a Reply.

    The code is the last line's (the one that ends the reply; a reader that
    checked each line with `reply_line_error` has made them all the same). The
    RFC 3463 code is taken when the first line's text starts with one of the
    code's class, and taken off every line that starts with one.
    """
    code = int(lines[-1][:3])
    texts = [ln[4:] for ln in lines]
    m = _ENHANCED.match(texts[0])
    enhanced = ""
    if m and m.group(1)[0] == str(code)[0]:
        enhanced = m.group(1)
        texts = [_ENHANCED.sub("", t, count=1) for t in texts]
    return Reply(code, enhanced, "\n".join(texts))
