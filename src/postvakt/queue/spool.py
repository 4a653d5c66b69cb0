"""The durable spool: queue files, the commit point, state moves, recovery.

See the package docstring for the design. Everything here is blocking file
I/O; asyncio callers run it in an executor.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import logging
import os
import random
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from postvakt import pid
from postvakt.queue.envelope import Envelope, Status
from postvakt.reply import Reply

log = logging.getLogger("postvakt.queue")

# Fault injection for crash tests: read once, at import, so that a test
# cannot switch it on in a running server by accident.
CRASH_AT = os.environ.get("POSTVAKT_CRASH_AT", "")
CRASH_POINTS = (
    "after_write",
    "after_fsync",
    "after_rename",
    "before_250",
    "after_250",
    # Group commit: after the first rename of a batch of two or more.
    "mid_batch",
)

INCOMING = "incoming"
ACTIVE = "active"
DEFERRED = "deferred"
HOLD = "hold"
CORRUPT = "corrupt"
STATES = (INCOMING, ACTIVE, DEFERRED, HOLD)
# Files of delivered messages, kept to be the next messages' files (see
# `Queue.take_spare`): nothing in it is mail, nothing reads it.
SPARE = "spare"
ALL_DIRS = ("tmp", *STATES, CORRUPT, "status", SPARE)
# How many queue files `spare/` keeps, each one of a delivered message of at
# most SPARE_FILE_MAX octets (so at most 64 MiB); past that they are unlinked.
# Enough for the messages a burst leaves queued: every file unlinked frees an
# inode, and on ext4 without a journal each new inode of the same block group
# (every Maildir file) then skips it for a minute or more (`recently_deleted`,
# a buffer lookup each). With 512, a burst of 3,000 messages freed 0.6 inodes
# a message and new inodes took a third of the queue manager's CPU.
SPARE_MAX = 4096
SPARE_FILE_MAX = 16 * 1024
# When spare/ was found empty, how long before a writer looks again: the
# queue manager refills it all the time, and a writer that does not look
# makes new files, which end up unlinked when spare/ is full.
SPARE_LOOK_AGAIN = 0.05

# The trailer that closes every queue file, like Postfix's END record: a file
# without it was never committed. Fields: body size, body CRC-32, envelope
# size, envelope CRC-32. Fixed width, so it is found by seeking from the end.
_FOOTER = b"\n#PVQ1 %012d %08x %08d %08x\n"
FOOTER_LEN = len(_FOOTER % (0, 0, 0, 0))
_MAGIC = b"\n#PVQ1 "
# What a message being received keeps in memory before its tmp file is made:
# a typical message (a few KiB) is written to disk once, by the committer.
# Past it, the bytes are written each time this many have gathered again,
# which keeps the writes of a 10 MB message in the hundreds.
SPILL = 64 * 1024
# Read size when checking or streaming a body: the manager's memory stays flat
# whatever the message size (DESIGN.md: < 20 MB for a 50 MB message).
READ_CHUNK = 128 * 1024
# The header a delivery rewrites is read into memory up to this size; a
# header section longer than this is cut at a line end (the front refuses far
# smaller headers long before: this only bounds what a damaged file costs).
HEAD_LIMIT = 1024 * 1024
# A queue file shorter than this is read whole, in one read, when it is
# delivered (the 1 KiB message of the benchmarks is 2 KiB with its envelope):
# one read, and no fstat for its size, instead of a read for the trailer, one
# for the envelope, one for the body's checksum and one for the header. Its
# body stays in memory while it is delivered: 200 deliveries at once
# (`manager.MAX_ACTIVE`) hold under 13 MB. Below glibc's mmap threshold
# (128 KiB), so the read's buffer comes from the heap.
WHOLE_READ = 64 * 1024


def spare_worthy(whole: bytes | None) -> bool:
    """Whether a delivered queue file is kept in spare/: one read whole
    (`whole`, the file's octets) and no bigger than SPARE_FILE_MAX."""
    return whole is not None and len(whole) <= SPARE_FILE_MAX


def crash_point(name: str) -> None:
    """Stop the process dead when POSTVAKT_CRASH_AT names this point."""
    if CRASH_AT == name:
        os._exit(137)


class QueueWriteError(Exception):
    """The message could not be made durable; the client must try again."""

    reply = Reply(451, "4.3.0", "Queue file write error")

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CorruptEntry(Exception):
    """A committed queue file that cannot be read back."""


_counter = itertools.count()
_counter_lock = threading.Lock()


def new_queue_id() -> str:
    """Unique across processes, and sortable by creation time (fixed width hex)."""
    with _counter_lock:
        seq = next(_counter)
    usec = time.time_ns() // 1000
    return f"{usec:014X}{pid.current() & 0xFFFFF:05X}{seq & 0xFFF:03X}"


def fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class QueuedMessage:
    queue_id: str
    state: str
    envelope: Envelope
    size: int
    crc: int


@dataclass(frozen=True)
class OpenMessage:
    """What `Queue.open_message` read: the body in memory (a small file,
    already closed) or a descriptor on the file (a large one)."""

    msg: QueuedMessage
    fd: int | None
    body: bytes | None


@dataclass(frozen=True)
class Recovery:
    """What start-up recovery did, for the log and for tests."""

    removed_tmp: int = 0
    requeued_active: int = 0
    quarantined: int = 0
    removed_status: int = 0


class Sealable(Protocol):
    """What a commit needs of an envelope: its JSON and whether it is held."""

    @property
    def hold(self) -> str | None: ...

    def to_json(self) -> bytes: ...


class IncomingMessage:
    """A message being received: `write` chunks, then `commit` or `abort`.

    The first SPILL bytes stay in memory and the tmp file is made only when
    more arrive, or at the commit (by the committer, off the event loop): a
    session then needs no thread hand-off at DATA, and a small message costs
    one file creation, in the batch that commits it. A message that is never
    committed leaves no file. The writer holds an exclusive flock on its tmp
    file until it is done, so recovery can tell a live writer (lock held) from
    a dead one.
    """

    def __init__(self, queue: Queue, queue_id: str | None = None) -> None:
        self.queue = queue
        self.queue_id = queue_id if queue_id is not None else new_queue_id()
        # Paths as text, made once per message: pathlib's joins cost the front
        # 3% of its CPU per message here.
        self._tmp = queue.paths["tmp"] + self.queue_id
        self._size = 0
        self._crc = 0
        self._done = False
        # Bytes not yet in the file: the message itself up to SPILL, then what
        # waits for the next write (the descriptor is unbuffered).
        self._buf = bytearray()
        self._fd: int | None = None
        self._written = 0  # octets in the file from this message
        self._reused = False  # the file is a spare one: old bytes past `_written`

    @classmethod
    def carried(
        cls,
        queue: Queue,
        queue_id: str,
        pending: bytes,
        size: int,
        crc: int,
        written: int,
        reused: bool,
    ) -> IncomingMessage:
        """The message as the front handed it to the commit helper
        (server/commit_process.py): `pending`, the octets not yet in a file. A
        message that outgrew SPILL has its tmp file (`written` > 0), which the
        front still holds locked; the helper writes the rest through its own
        descriptor, from where the front stopped."""
        msg = cls(queue, queue_id)
        msg._size, msg._crc = size, crc
        msg._buf = bytearray(pending)
        msg._written, msg._reused = written, reused
        if written:
            fd = os.open(msg._tmp, os.O_WRONLY)
            os.lseek(fd, written, os.SEEK_SET)
            msg._fd = fd
        return msg

    def handed(self) -> tuple[str, bytes, int, int, int, bool]:
        """What `carried` rebuilds the message from, in another process."""
        return self.queue_id, bytes(self._buf), self._size, self._crc, self._written, self._reused

    def settled(self) -> None:
        """The commit helper committed the message (or undid it): done here."""
        self._done = True
        self._buf = bytearray()
        self._close()

    def _open(self) -> int:
        """Make the tmp file (locked); the caller writes what waits in `_buf`."""
        try:
            fd = self.queue.take_spare(self._tmp)  # locked before it is in tmp/
            self._reused = fd is not None
            if fd is None:
                fd = _create_locked(self._tmp)
        except OSError as e:
            raise QueueWriteError(f"cannot create {self._tmp}: {e}") from e
        self._fd = fd
        return fd

    def _drain(self) -> None:
        """Everything waiting in `_buf` into the file, made now if need be."""
        fd = self._fd if self._fd is not None else self._open()
        _write_all(fd, self._buf)
        self._written += len(self._buf)
        del self._buf[:]

    def write(self, chunk: bytes) -> None:
        if self._done:
            raise QueueWriteError("message already committed or aborted")
        try:
            self._buf += chunk
            if len(self._buf) > SPILL:
                self._drain()
        except OSError as e:
            self.abort()
            raise QueueWriteError(f"write {self._tmp}: {e}") from e
        except QueueWriteError:
            self.abort()
            raise
        self._size += len(chunk)
        self._crc = zlib.crc32(chunk, self._crc)

    def read_back(self) -> bytes:
        """The bytes written so far, for checks that need the whole message
        before the commit (DKIM verification at the end of DATA). Blocking."""
        if self._done:
            raise QueueWriteError("message already committed or aborted")
        if self._fd is None:
            return bytes(self._buf)
        try:
            self._drain()
            with open(self._tmp, "rb") as f:
                return f.read(self._written)  # a spare file's old bytes follow
        except OSError as e:
            raise QueueWriteError(f"read {self._tmp}: {e}") from e

    def commit(self, envelope: Sealable) -> None:
        """Make the message durable. Returns only once a crash cannot lose it."""
        error = commit_batch([(self, envelope)])[0]
        if error is not None:
            raise error

    def _seal(self, envelope: Sealable) -> str:
        """Write the envelope and the trailer; the path the commit will rename to."""
        if self._done:
            raise QueueWriteError("message already committed or aborted")
        env = envelope.to_json()
        self._buf += env
        self._buf += _FOOTER % (self._size, self._crc, len(env), zlib.crc32(env))
        self._drain()
        if self._reused:
            assert self._fd is not None
            os.ftruncate(self._fd, self._written)  # the trailer must end the file
        return self._final(envelope)

    def _final(self, envelope: Sealable) -> str:
        """The path the commit renames the file to: incoming/, or hold/."""
        state = HOLD if envelope.hold is not None else INCOMING
        return self.queue.paths[state] + self.queue_id

    def _fsync(self) -> None:
        assert self._fd is not None
        os.fsync(self._fd)

    def undone(self, envelope: Sealable, error: BaseException) -> QueueWriteError:
        """The commit helper died with this message in its batch (and is gone):
        whatever it did of the commit is undone (the client gets a 451, as for
        any failed commit), the file it made and a rename it may have made."""
        error = self._fail(self._final(envelope), error)
        try:
            os.unlink(self._tmp)  # the helper's own tmp file, if it made one
        except OSError:
            pass
        return error

    def _fail(self, final: str | None, error: BaseException) -> QueueWriteError:
        """Undo a commit that did not complete: the client gets a 451 and must not
        find its message delivered as well (the rename may already have happened)."""
        self.abort()
        if final is not None:
            try:
                os.unlink(final)
            except OSError:
                pass
        if isinstance(error, QueueWriteError):
            return error
        return QueueWriteError(f"commit {self.queue_id}: {error}")

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        made = self._fd is not None  # else the message never left memory: no file
        self._close()
        self._buf = bytearray()
        if made:
            try:
                os.unlink(self._tmp)
            except OSError:
                pass

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


def _create_locked(path: str) -> int:
    """A new tmp file at `path`, open for writing with its flock held.

    Between the file's creation and its flock, queue recovery (which runs
    while the fronts accept mail) can find it unlocked and remove it: the
    change time it goes by comes from the kernel's coarse clock and may read
    earlier than the recovery's start. A writer that then finds its file
    gone makes it again, so its rename at the commit never meets a missing
    file (a 451 for a message nothing was wrong with)."""
    for _ in range(3):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_nlink:  # recovery unlinks only what it holds locked
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise OSError(errno.ENOENT, "removed by queue recovery as it was made", path)


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    finally:
        view.release()  # else the bytearray cannot be resized after


def commit_batch(
    batch: list[tuple[IncomingMessage, Sealable]],
) -> list[QueueWriteError | None]:
    """Make several messages durable together (group commit); one result each.

    The order is the single-message commit's, stage by stage over the batch:
    write every trailer, fsync every file (on ext4 the first fsync's journal
    commit carries the others' data, so the rest cost little), rename every
    file into its state directory (the commit point), then fsync each touched
    directory once. A message counts as committed only when its own file and
    its directory fsync succeeded; any failure undoes that message (or every
    message renamed into a directory whose fsync failed) and reports it.
    """
    errors: list[QueueWriteError | None] = [None] * len(batch)
    staged: list[tuple[int, IncomingMessage, str]] = []
    for i, (msg, envelope) in enumerate(batch):
        try:
            staged.append((i, msg, msg._seal(envelope)))
        except (OSError, QueueWriteError) as e:
            errors[i] = msg._fail(None, e)
    crash_point("after_write")

    def stage(step: Callable[[IncomingMessage, str], object], undo_final: bool) -> None:
        kept = []
        for i, msg, final in staged:
            try:
                step(msg, final)
                kept.append((i, msg, final))
            except OSError as e:
                errors[i] = msg._fail(final if undo_final else None, e)
        staged[:] = kept

    stage(lambda msg, final: msg._fsync(), undo_final=False)
    crash_point("after_fsync")

    def rename(msg: IncomingMessage, final: str) -> None:
        os.rename(msg._tmp, final)
        if len(staged) > 1 and msg is staged[0][1]:
            crash_point("mid_batch")

    stage(rename, undo_final=True)
    crash_point("after_rename")
    failed_dirs: dict[str, OSError] = {}
    for parent in {os.path.dirname(final) for _, _, final in staged}:
        try:
            fsync_dir(parent)
        except OSError as e:
            failed_dirs[parent] = e
    for i, msg, final in staged:
        parent = os.path.dirname(final)
        if parent in failed_dirs:
            errors[i] = msg._fail(final, failed_dirs[parent])
        else:
            msg._done = True
            msg._close()
    return errors


class Queue:
    """The queue directory. Every method is safe while the server runs."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        for d in ALL_DIRS:
            (self.root / d).mkdir(parents=True, exist_ok=True, mode=0o700)
        self._spare_lock = threading.Lock()
        self._spares: list[str] = []  # names in spare/ this process may take
        self._spare_look = 0.0  # when a writer may list spare/ again
        self._spares_given = SPARE_MAX  # spare/ entries this process assumes (recount at the cap)
        # Every directory as text ending in "/": the per-message paths are made
        # by adding the queue id (pathlib's joins were a tenth of the manager's
        # CPU per message, and 3% of the front's).
        self.paths = {d: f"{self.root / d}/" for d in ALL_DIRS}

    # ------------------------------------------------------------ spare files

    # A new file costs the file system an inode, a deleted one frees it. On
    # ext4 without a journal each new inode skips every inode of its group
    # freed in the last minutes (`recently_deleted`), and with a queue file
    # made and deleted per message that scan took 30% of the front's CPU
    # (perf, 1 KiB messages). So the file of a delivered small message is
    # kept in spare/, and the next message's file is one of them: no inode
    # made or freed. Only queue files go there and only queue files come from
    # there; the writer writes over one once it is its own (locked, in tmp/)
    # and cuts it to its own length before the fsync.

    def recycle(self, path: Path | str, name: str) -> bool:
        """Move a finished queue file into spare/; False when spare/ is full
        (the caller unlinks it). Raises FileNotFoundError."""
        with self._spare_lock:
            if self._spares_given >= SPARE_MAX:
                try:
                    self._spares_given = len(os.listdir(self.paths[SPARE]))
                except OSError:
                    return False
                if self._spares_given >= SPARE_MAX:
                    return False
            self._spares_given += 1
        os.rename(path, self.paths[SPARE] + name)
        return True

    def take_spare(self, dest: str) -> int | None:
        """A spare file renamed to `dest` (a new tmp file), open for writing at
        its start with its flock held, which it took before the rename:
        recovery, which removes a tmp/ file nobody holds, never sees it
        unlocked. Its old bytes are still in it: the writer writes over them
        and cuts the file to its own length before the fsync
        (`IncomingMessage._seal`); emptying it first freed its blocks only for
        the writer to allocate them again (0.2-1.7 ms a message, with the
        lock waits of the extra system call). None when there is no spare
        file to take."""
        for _ in range(4):  # another process may take a name first
            name = self._spare_name()
            if name is None:
                return None
            spare = self.paths[SPARE] + name
            try:
                fd = os.open(spare, os.O_WRONLY)
            except FileNotFoundError:
                continue
            except OSError:
                return None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.rename(spare, dest)  # names are queue ids: never in spare/ twice
            except (BlockingIOError, FileNotFoundError):  # another writer has it
                os.close(fd)
                continue
            except OSError:
                os.close(fd)
                return None
            return fd
        return None

    def _spare_name(self) -> str | None:
        with self._spare_lock:
            if not self._spares:
                now = time.monotonic()
                if now < self._spare_look:
                    return None
                try:
                    self._spares = os.listdir(self.paths[SPARE])
                except OSError:
                    self._spares = []
                # Each writer (front worker) in its own order: in the listed
                # order they would all go for the same names.
                random.shuffle(self._spares)
                if not self._spares:
                    self._spare_look = now + SPARE_LOOK_AGAIN
                    return None
            return self._spares.pop()

    # ------------------------------------------------------------ writing

    def new_message(self) -> IncomingMessage:
        return IncomingMessage(self)

    # ------------------------------------------------------------ reading

    def path(self, state: str, queue_id: str) -> Path:
        return self.root / state / queue_id

    def ids(self, state: str) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.paths[state]) if not n.startswith("."))
        except FileNotFoundError:
            return []

    def find(self, queue_id: str) -> str | None:
        """The state a message is in, or None when there is no such message."""
        if not valid_id(queue_id):
            return None
        for state in (*STATES, CORRUPT):
            if os.path.exists(self.paths[state] + queue_id):
                return state
        return None

    def load(self, queue_id: str, state: str) -> QueuedMessage:
        """Read the envelope; raises FileNotFoundError or CorruptEntry."""
        fd = os.open(self.paths[state] + queue_id, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            size, crc, env_len, env_crc = _trailer(fd, st.st_size)
            env = os.pread(fd, env_len, size)
        finally:
            os.close(fd)
        return _queued(queue_id, state, env, env_crc, size, crc)

    def read_body(self, msg: QueuedMessage) -> bytes:
        """The message bytes as received; raises FileNotFoundError or CorruptEntry."""
        with open(self.paths[msg.state] + msg.queue_id, "rb") as f:
            data = f.read(msg.size)
        if len(data) != msg.size or zlib.crc32(data) != msg.crc:
            raise CorruptEntry("message checksum mismatch")
        return data

    def open_message(self, queue_id: str, state: str) -> OpenMessage:
        """The envelope and the body, checked, from one open: a file shorter
        than WHOLE_READ is read in one read and closed (the body is then in
        memory); a larger one is read in chunks to check its body, never
        whole, and its descriptor is returned (the caller closes it). Either
        way the bytes stay readable when the admin deletes the message
        meanwhile. Raises FileNotFoundError, CorruptEntry or OSError."""
        fd = os.open(self.paths[state] + queue_id, os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.pread(fd, WHOLE_READ, 0)
            if len(data) < WHOLE_READ:  # all of it: no need to ask for the size
                total = len(data)
                size, crc, env_len, env_crc = _parse_trailer(data[-FOOTER_LEN:], total)
                msg = _queued(queue_id, state, data[size : size + env_len], env_crc, size, crc)
                body = data[:size]
                if zlib.crc32(body) != crc:
                    raise CorruptEntry("message checksum mismatch")
                os.close(fd)
                return OpenMessage(msg, None, body)
            total = os.fstat(fd).st_size
            size, crc, env_len, env_crc = _trailer(fd, total)
            env = os.pread(fd, env_len, size)
            msg = _queued(queue_id, state, env, env_crc, size, crc)
            body_crc = 0
            pos = 0
            while pos < size:
                piece = os.pread(fd, min(READ_CHUNK, size - pos), pos)
                if not piece:
                    break
                body_crc = zlib.crc32(piece, body_crc)
                pos += len(piece)
            if pos != size or body_crc != crc:
                raise CorruptEntry("message checksum mismatch")
        except BaseException:
            os.close(fd)
            raise
        return OpenMessage(msg, fd, None)

    def read_status(self, queue_id: str) -> Status:
        """The delivery status; a missing or unreadable one means "nothing done yet"
        (at worst a recipient gets the message twice, never not at all)."""
        status = self.saved_status(queue_id)
        return Status() if status is None else status

    def saved_status(self, queue_id: str) -> Status | None:
        """`read_status`, but None when there is no status file at all."""
        try:
            with open(self.paths["status"] + queue_id, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        try:
            return Status.from_json(data)
        except (ValueError, KeyError, TypeError):
            log.warning("queue_id=%s unreadable status file ignored", queue_id)
            return Status()

    def write_status(self, queue_id: str, status: Status) -> None:
        final = self.root / "status" / queue_id
        tmp = self.root / "status" / f".{queue_id}.{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(status.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, final)

    # ------------------------------------------------------------ state changes

    def move(self, queue_id: str, src: str, dst: str) -> bool:
        """Rename between states; False if the message was not in `src` (someone
        else moved or deleted it first: the rename is the lock)."""
        try:
            os.rename(self.paths[src] + queue_id, self.paths[dst] + queue_id)
        except FileNotFoundError:
            return False
        return True

    def remove(
        self, queue_id: str, state: str, *, status: bool = True, spare: bool = False
    ) -> bool:
        """Delete a finished (or admin-deleted) message: file first, then status.
        `status=False`: the caller read no status file and none can have been
        written since (only the manager writes one, for a message it holds),
        so there is none to remove. `spare=True`: a delivered message's small
        file, kept in spare/ for a new message's while there is room."""
        path = self.paths[state] + queue_id
        try:
            if not (spare and self.recycle(path, queue_id)):
                os.unlink(path)
        except FileNotFoundError:
            return False
        if not status:
            return True
        try:
            os.unlink(self.paths["status"] + queue_id)
        except FileNotFoundError:
            pass
        return True

    def quarantine(self, queue_id: str, state: str, reason: str) -> None:
        if self.move(queue_id, state, CORRUPT):
            log.error("queue_id=%s corrupt queue file moved to %s/: %s", queue_id, CORRUPT, reason)

    # Admin operations (the `postvakt queue` commands). Each is one rename.

    def hold(self, queue_id: str) -> bool:
        return any(self.move(queue_id, s, HOLD) for s in (DEFERRED, INCOMING, ACTIVE))

    def release(self, queue_id: str) -> bool:
        return self.move(queue_id, HOLD, INCOMING)

    def retry(self, queue_id: str) -> bool:
        return self.move(queue_id, DEFERRED, INCOMING)

    def delete(self, queue_id: str) -> bool:
        return any(self.remove(queue_id, s) for s in (*STATES, CORRUPT))

    # ------------------------------------------------------------ recovery

    def recover(self) -> Recovery:
        """Bring the spool to a clean state after a crash. Never raises for a
        bad entry: it is quarantined and logged, so a restart cannot loop."""
        removed_tmp = 0
        since = time.time()
        for name in self.ids("tmp"):
            if _writer_gone(self.root / "tmp" / name, since):
                removed_tmp += 1
        requeued = 0
        for qid in self.ids(ACTIVE):
            if self.move(qid, ACTIVE, INCOMING):
                requeued += 1
        quarantined = 0
        live: set[str] = set()
        for state in STATES:
            for qid in self.ids(state):
                try:
                    self.load(qid, state)
                except FileNotFoundError:
                    continue
                except (CorruptEntry, OSError) as e:
                    self.quarantine(qid, state, str(e))
                    quarantined += 1
                    continue
                live.add(qid)
        removed_status = 0
        corrupt = set(self.ids(CORRUPT))
        for name in os.listdir(self.root / "status"):
            if name.startswith("."):
                _unlink(self.root / "status" / name)
                removed_status += 1
            elif name not in live and name not in corrupt and self.find(name) is None:
                _unlink(self.root / "status" / name)
                removed_status += 1
        r = Recovery(removed_tmp, requeued, quarantined, removed_status)
        log.info(
            "queue recovery: removed_tmp=%d requeued=%d quarantined=%d removed_status=%d",
            r.removed_tmp,
            r.requeued_active,
            r.quarantined,
            r.removed_status,
        )
        return r


def read_head(fd: int, size: int) -> bytes:
    """The header section of the body in `fd` (through its blank line), or
    all of a body without one, at most HEAD_LIMIT octets cut at a line end."""
    return split_head(os.pread(fd, min(size, HEAD_LIMIT), 0), size)


def split_head(data: bytes, size: int) -> bytes:
    """`read_head` of a body whose first octets (of `size`) are `data`."""
    data = data[:HEAD_LIMIT]
    ends = [i + n for i, n in ((data.find(b"\r\n\r\n"), 4), (data.find(b"\n\n"), 2)) if i >= 0]
    if ends:
        return data[: min(ends)]
    if len(data) < size:
        cut = data.rfind(b"\n")
        return data[: cut + 1] if cut >= 0 else data
    return data


def valid_id(queue_id: str) -> bool:
    return 0 < len(queue_id) <= 64 and all(c in "0123456789ABCDEF" for c in queue_id)


def parse_footer(footer: bytes) -> tuple[int, int, int, int]:
    if len(footer) != FOOTER_LEN or not footer.startswith(_MAGIC) or not footer.endswith(b"\n"):
        raise CorruptEntry("no trailer (never committed or truncated)")
    try:
        size, crc, env_len, env_crc = footer[len(_MAGIC) : -1].split(b" ")
        return int(size), int(crc, 16), int(env_len), int(env_crc, 16)
    except ValueError as e:
        raise CorruptEntry(f"bad trailer: {e}") from e


def _trailer(fd: int, total: int) -> tuple[int, int, int, int]:
    """The trailer of the queue file open on `fd`, `total` octets long."""
    return _parse_trailer(os.pread(fd, FOOTER_LEN, max(total - FOOTER_LEN, 0)), total)


def _parse_trailer(footer: bytes, total: int) -> tuple[int, int, int, int]:
    if total < FOOTER_LEN:
        raise CorruptEntry("shorter than its trailer")
    size, crc, env_len, env_crc = parse_footer(footer)
    if size + env_len + FOOTER_LEN != total:
        raise CorruptEntry("sizes in the trailer do not match the file")
    return size, crc, env_len, env_crc


def _queued(
    queue_id: str, state: str, env: bytes, env_crc: int, size: int, crc: int
) -> QueuedMessage:
    """The message whose envelope (checked against `env_crc`) is `env`."""
    if zlib.crc32(env) != env_crc:
        raise CorruptEntry("envelope checksum mismatch")
    try:
        envelope = Envelope.from_json(env)
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptEntry(f"envelope unreadable: {e}") from e
    return QueuedMessage(queue_id, state, envelope, size, crc)


def _writer_gone(path: Path, since: float) -> bool:
    """Remove a tmp file whose writer died (its flock is free). True if removed.

    A file that came into tmp/ at or after `since` (the start of recovery) is
    a live front's, even if its writer has not taken the lock yet: recovery
    runs while the fronts accept mail, and a file made in the moment between
    its creation and its flock must not be taken from its writer."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        if os.fstat(fd).st_ctime >= since:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        _unlink(path)
        return True
    finally:
        os.close(fd)


def _unlink(path: Path | str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
