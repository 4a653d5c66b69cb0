"""Commands per session, for the one summary line a session logs when it ends.

Postfix ends every smtpd session with `disconnect from host[addr] ehlo=1
mail=1 rcpt=0/1 data=0/1 quit=1 commands=3/5`: how many times each command
was issued and, where some were refused, how many succeeded. The protocol
cores (`postvakt.smtp`, `postvakt.pop3`) keep one of these; pure, no I/O.
"""

from __future__ import annotations


class CommandTally:
    """Per command: [succeeded, issued]; a command counts when its final answer is out."""

    __slots__ = ("_counts", "_open", "_order")

    def __init__(self, order: tuple[str, ...] = ()) -> None:
        self._counts: dict[str, list[int]] = {}
        self._open: str | None = None
        self._order = order

    def issued(self, verb: str) -> None:
        """A command was read; its outcome is the next `answered()`."""
        counts = self._counts.get(verb)
        if counts is None:
            counts = self._counts[verb] = [0, 0]
        counts[1] += 1
        self._open = verb

    def answered(self, ok: bool) -> None:
        """The final answer to the command last issued (nothing if none is open)."""
        if self._open is not None:
            if ok:
                self._counts[self._open][0] += 1
            self._open = None

    def summary(self) -> str:
        """`ehlo=1 mail=1 rcpt=0/1 quit=1 commands=3/4`; `commands=0` for a silent client."""
        order = [v for v in self._order if v in self._counts]
        order += [v for v in self._counts if v not in self._order]
        ok = sum(c[0] for c in self._counts.values())
        total = sum(c[1] for c in self._counts.values())
        parts = [f"{v}={_ratio(*self._counts[v])}" for v in order]
        parts.append(f"commands={_ratio(ok, total)}")
        return " ".join(parts)


def _ratio(ok: int, total: int) -> str:
    return str(total) if ok == total else f"{ok}/{total}"
