"""The front's commit helper: group commit in a process of its own.

Each front process (and each worker, `[server] workers`) starts one helper,
`python -m postvakt.server.commit_process QUEUE_ROOT FD`, and its event loop
talks to it over a socket pair (`server/commit_client.py`): the messages whose commit
the sessions asked for in one turn of the loop, or while the helper was busy
with the batch before, go as the next batch, one batch at a time:

- a batch goes as one frame: for each message its queue id, the octets not
  yet in a file, its size and CRC, how much of it a spilled tmp file already
  holds (the front keeps that file's flock until the answer), and its
  envelope's JSON; the answer is one frame with one result per message;
- the helper commits the batch exactly as the thread did (`commit_batch`:
  write, fsync each file, rename, fsync each directory) and answers only
  then; the front says 250 only after that answer.

Why a process: every system call of a commit gives up the interpreter lock,
and in the front a committer thread then waited for the event loop to give
it back, at each of a message's eight calls. In a process of its own the
commit waits for the disk only (bench/README.md: 1,145 -> 1,400 messages a
second with one message per connection, 1,235 -> 1,758 with PIPELINING).
The loop writes the batch and reads the answer itself, with no thread
between them (1,124 -> 1,236 with one message per connection); it does no
file system work for it, but close a spilled message's descriptor.

The helper lives as long as its front's end of the socket: it ignores
SIGINT, SIGTERM and SIGHUP (a stop of the service signals every process of
it; the front decides when its commits end) and exits at end of file. When
it dies in the middle of a batch, the front undoes what it may have done of
that batch (in a thread, off the loop), answers 451 for each message (a
crash's outcome: never a 250 for a message not on disk), and starts another;
the messages that waited go to the new one. With
`POSTVAKT_CRASH_AT` set (crash tests) a crash point kills the helper and the
front exits with it, as one server would have died there.
"""

from __future__ import annotations

import logging
import marshal
import signal
import socket
import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from postvakt.queue.spool import IncomingMessage, Queue, Sealable, commit_batch

if TYPE_CHECKING:
    import subprocess

log = logging.getLogger("postvakt.queue")

# A frame: its length, then `marshal`'s form of tuples of bytes, text,
# numbers and None (the two ends are one program, over a socket pair nobody
# else holds; pickle would cost the helper 1.5 MB of memory for nothing).
_LENGTH = struct.Struct("!I")
# How long `close` waits for the helper to finish and exit.
STOP_WAIT = 10.0
# What the helper ignores: a stop of the service signals all its processes.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass(frozen=True, slots=True)
class Sealed:
    """An envelope as the helper needs it (`spool.Sealable`)."""

    hold: str | None
    json: bytes

    def to_json(self) -> bytes:
        return self.json


def frame(obj: Any) -> bytes:
    data = marshal.dumps(obj)
    return _LENGTH.pack(len(data)) + data


def batch_frame(batch: Iterable[tuple[IncomingMessage, Sealable]]) -> bytes:
    """A batch as the helper reads it (`serve`): one tuple per message."""
    return frame([(*msg.handed(), env.to_json(), env.hold) for msg, env in batch])


def take_frame(buf: bytearray) -> bytes | None:
    """The first whole frame's contents, taken off `buf`; None until it is whole."""
    if len(buf) < _LENGTH.size:
        return None
    (size,) = _LENGTH.unpack_from(buf)
    end = _LENGTH.size + size
    if len(buf) < end:
        return None
    data = bytes(buf[_LENGTH.size : end])
    del buf[:end]
    return data


def _receive(sock: socket.socket, buf: bytearray) -> Any:
    """The next frame's object (`take_frame` over what `sock` sends, `buf`
    holding what came beyond it); None at end of file between frames."""
    while (data := take_frame(buf)) is None:
        chunk = sock.recv(65536)
        if not chunk:
            if buf:
                raise EOFError("the frame was cut short")
            return None
        buf += chunk
    return marshal.loads(data)


class CommitHelper:
    """The helper process: started, and stopped (killed if it must be)."""

    def __init__(self, root: Path | str) -> None:
        self.root = str(root)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> socket.socket:
        """Start a helper; the front's end of its socket pair."""
        # Here, not at the top: the helper, which imports this module, never
        # starts a process (subprocess and what it loads: 1 MB of its memory).
        import subprocess

        ours, theirs = socket.socketpair()
        # The child starts with the stop signals blocked (a signal mask
        # survives exec) and ignores them before it lets them in: a stop in
        # its first moments does not kill it either.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            args = [sys.executable, "-m", "postvakt.server.commit_process", self.root]
            self.proc = subprocess.Popen(
                [*args, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            theirs.close()
        return ours

    def stop(self, *, kill: bool) -> None:
        """Wait for the helper to exit (blocking); `kill`: make it exit now."""
        import subprocess  # loaded already: the front started the helper with it

        proc, self.proc = self.proc, None
        if proc is None:
            return
        if kill:
            proc.kill()
        try:
            proc.wait(STOP_WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def serve(queue: Queue, sock: socket.socket) -> None:
    """The helper: commit each batch that comes, answer, until end of file."""
    buf = bytearray()
    while True:
        items = _receive(sock, buf)
        if items is None:
            return
        replies: list[str | None] = [None] * len(items)
        batch: list[tuple[int, IncomingMessage, Sealed]] = []
        for i, (qid, pending, size, crc, written, reused, json, hold) in enumerate(items):
            try:
                msg = IncomingMessage.carried(queue, qid, pending, size, crc, written, reused)
            except OSError as e:  # a spilled message's file is gone
                replies[i] = f"commit {qid}: {e}"
                continue
            batch.append((i, msg, Sealed(hold, json)))
        try:
            errors = commit_batch([(msg, sealed) for _, msg, sealed in batch])
        except Exception as e:  # a bug must fail the batch, not the front
            log.exception("group commit failed")
            errors = [msg._fail(None, e) for _, msg, _ in batch]
        for (i, _, _), error in zip(batch, errors, strict=True):
            replies[i] = None if error is None else str(error)
        sock.sendall(frame(replies))


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: python -m postvakt.server.commit_process QUEUE_ROOT FD", file=sys.stderr)
        return 2
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)  # the front decides: end of file
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sock = socket.socket(fileno=int(argv[1]))
    try:
        serve(Queue(argv[0]), sock)
    except (OSError, EOFError) as e:
        log.error("commit helper: %s", e)
        return 1
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
