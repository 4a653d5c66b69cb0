"""A message as delivery reads it: a few bytes in memory, the rest from a file.

Delivery never holds a whole large message: the queue file is read in
`CHUNK` pieces with `os.pread` (no shared file position, so local and remote
deliveries of one message read it side by side), and only the parts that
delivery rewrites (late header fields, a DKIM signature, the header with
forged Authentication-Results: removed) live in `prefix`. A small message
(`spool.WHOLE_READ`) was read whole with its envelope, in one read: its body
stays in `body` and no descriptor is kept.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

# Read size: big enough that a 50 MB message costs a few hundred reads, small
# enough that several deliveries at once stay far below the manager's memory target.
CHUNK = 128 * 1024


@dataclass(frozen=True)
class MessageSource:
    """`prefix`, then octets [start, end) of `body` when given, else of the
    open file `fd` (neither: prefix only)."""

    prefix: bytes
    fd: int | None = None
    start: int = 0
    end: int = 0
    body: bytes | None = None

    @classmethod
    def from_bytes(cls, data: bytes) -> MessageSource:
        return cls(data)

    @property
    def in_memory(self) -> bool:
        """Nothing is read from a file: `chunks` never blocks."""
        return self.fd is None

    @property
    def size(self) -> int:
        rest = self.fd is not None or self.body is not None
        return len(self.prefix) + (self.end - self.start if rest else 0)

    def chunks(self) -> Iterator[bytes]:
        """The message in pieces; blocking (file reads)."""
        if self.prefix:
            yield self.prefix
        if self.body is not None:
            if self.end > self.start:
                yield self.body[self.start : self.end]
            return
        if self.fd is None:
            return
        pos = self.start
        while pos < self.end:
            piece = os.pread(self.fd, min(CHUNK, self.end - pos), pos)
            if not piece:
                raise OSError(f"queue file ends at {pos} of {self.end} octets")
            pos += len(piece)
            yield piece

    async def achunks(self) -> AsyncIterator[bytes]:
        """The same pieces for the event loop; every file read runs in a thread."""
        if self.prefix:
            yield self.prefix
        if self.body is not None:
            if self.end > self.start:
                yield self.body[self.start : self.end]
            return
        if self.fd is None:
            return
        pos = self.start
        while pos < self.end:
            piece = await asyncio.to_thread(os.pread, self.fd, min(CHUNK, self.end - pos), pos)
            if not piece:
                raise OSError(f"queue file ends at {pos} of {self.end} octets")
            pos += len(piece)
            yield piece

    def read_all(self) -> bytes:
        """The whole message in memory: only for what needs it at once (a DKIM
        signature, the returned copy in a small bounce)."""
        return b"".join(self.chunks())
