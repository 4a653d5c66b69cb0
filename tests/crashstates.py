"""Power-loss states from a system-call trace, in the spirit of ALICE
("All File Systems Are Not Created Equal", OSDI 2014).

`strace -f -y -xx` records what a live server did to its files. `parse`
turns the trace into logical operations on the files under some roots
(create, write, fsync, rename, link, unlink) and marks where the server told a
client "250 ... queued as". `crash_states` then builds the file trees a power
loss after any operation could leave on disk, under this persistence model:

- a write is on disk only when a later, completed fsync of the same file says
  so; a directory entry (create, rename, link, unlink) only when a later,
  completed fsync of its directory does (a rename: of either directory, as
  journaling file systems commit a rename whole);
- besides what was made durable, the disk may hold any prefix, in program
  order, of what was not, the last write of the prefix possibly torn in half;
- and one later rename or unlink that was not made durable may have reached
  the disk ahead of that prefix (the kernel writes directories back in no
  promised order): the reordering that makes a missing directory fsync bite.

Directories themselves are taken as existing (the server creates them at
start or before their first file); the model is about files and entries.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath

# The system calls the recorder asks strace for.
TRACED = (
    "openat,open,creat,write,pwrite64,fsync,fdatasync,rename,renameat,renameat2,"
    "link,linkat,unlink,unlinkat"
)
STRACE_ARGS = ("strace", "-f", "-qq", "-y", "-xx", "-s", "1048576", "-e", f"trace={TRACED}")

_STR = re.compile(r'"((?:\\x[0-9a-f]{2})*)"(?:\.\.\.)?')
_FDPATH = re.compile(r"(-?\d+)<((?:\\x[0-9a-f]{2})*)>")
_CALL = re.compile(r"^(\w+)\((.*)\)\s+= (-?\d+)")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")
_ACK = re.compile(rb"^250 [0-9.]+ Ok: queued as ([0-9A-F]+)", re.M)
_DELETED = " (deleted)"


def _hex(s: str) -> bytes:
    return bytes.fromhex(s.replace("\\x", ""))


@dataclass(frozen=True)
class Op:
    """One logical operation; `ino` is the file it acts on (its creation index)."""

    kind: str  # create | write | fsync | rename | link | unlink | ack
    pid: int
    path: str = ""
    dst: str = ""
    ino: int = -1
    data: bytes = b""
    offset: int = 0
    qid: str = ""


@dataclass
class Trace:
    ops: list[Op] = field(default_factory=list)

    def acked(self, upto: int) -> set[str]:
        return {o.qid for o in self.ops[:upto] if o.kind == "ack"}


def _args(text: str) -> tuple[list[str], list[bytes], dict[str, str]]:
    """Split an argument list; strings become @S<n>, annotated fds keep their path."""
    strings: list[bytes] = []
    fdpaths: dict[str, str] = {}

    def s(m: re.Match[str]) -> str:
        strings.append(_hex(m.group(1)))
        return f"@S{len(strings) - 1}"

    def f(m: re.Match[str]) -> str:
        path = _hex(m.group(2)).decode("utf-8", "surrogateescape")
        fdpaths[m.group(1)] = path
        return f"{m.group(1)}"

    text = _STR.sub(s, text)
    text = _FDPATH.sub(f, text)
    return [a.strip() for a in text.split(",")], strings, fdpaths


def _string(arg: str, strings: list[bytes]) -> str:
    return strings[int(arg[2:])].decode("utf-8", "surrogateescape") if arg.startswith("@S") else ""


def _join(dirpath: str, path: str) -> str:
    return path if path.startswith("/") or not dirpath else str(PurePosixPath(dirpath) / path)


def parse(text: str, roots: tuple[str, ...]) -> Trace:
    """The operations on files under `roots`, in the order they completed."""
    pending: dict[str, str] = {}
    trace = Trace()
    names: dict[str, int] = {}  # the live namespace: path -> ino
    ends: dict[int, int] = {}  # where the next write() to a file lands (files are appended)

    def under(p: str) -> bool:
        return any(p == r or p.startswith(r.rstrip("/") + "/") for r in roots)

    for raw in text.splitlines():
        pid_s, _, line = raw.partition(" ")
        line = line.lstrip()  # strace pads the pid column
        if not pid_s.isdigit():
            continue
        pid = int(pid_s)
        if line.endswith(" <unfinished ...>"):
            pending[pid_s] = line[: -len(" <unfinished ...>")]
            continue
        if m := _RESUMED.match(line):
            line = pending.pop(pid_s, m.group(1) + "(") + m.group(2)
        m = _CALL.match(line)
        if m is None:
            continue
        name, argtext, ret = m.group(1), m.group(2), int(m.group(3))
        if ret < 0:
            continue
        args, strings, fdpaths = _args(argtext)
        tail = line[m.end() :]
        retpath = ""
        if tm := _FDPATH.match(tail.lstrip()):
            retpath = _hex(tm.group(2)).decode("utf-8", "surrogateescape")

        def fdpath(a: str, _fdpaths: dict[str, str] = fdpaths) -> str:
            p = _fdpaths.get(a, "")
            return p[: -len(_DELETED)] if p.endswith(_DELETED) else p

        if name in ("openat", "open", "creat"):
            flags = args[2] if name == "openat" else args[1] if name == "open" else "O_CREAT"
            path = retpath or _string(args[1] if name == "openat" else args[0], strings)
            if "O_CREAT" in flags and under(path) and path not in names:
                ino = len(trace.ops)
                names[path] = ino
                trace.ops.append(Op("create", pid, path=path, ino=ino))
            if "O_TRUNC" in flags and under(path) and path in names:
                ends[names[path]] = 0
        elif name in ("write", "pwrite64"):
            path = fdpath(args[0])
            data = strings[int(args[1][2:])][:ret] if args[1].startswith("@S") else b""
            if path and under(path) and path in names:
                ino = names[path]
                off = int(args[3]) if name == "pwrite64" else ends.get(ino, 0)
                trace.ops.append(Op("write", pid, path=path, ino=ino, data=data, offset=off))
                if name == "write":
                    ends[ino] = off + ret
            elif path.startswith("socket:") and (a := _ACK.search(data)):
                trace.ops.append(Op("ack", pid, qid=a.group(1).decode()))
        elif name in ("fsync", "fdatasync"):
            path = fdpath(args[0])
            if path and under(path):
                trace.ops.append(Op("fsync", pid, path=path, ino=names.get(path, -1)))
        elif name in ("rename", "renameat", "renameat2", "link", "linkat"):
            if name in ("rename", "link"):
                src, dst = _string(args[0], strings), _string(args[1], strings)
            else:
                src = _join(fdpath(args[0]), _string(args[1], strings))
                dst = _join(fdpath(args[2]), _string(args[3], strings))
            if not (under(src) or under(dst)) or src not in names:
                continue
            ino = names[src]
            kind = "link" if name.startswith("link") else "rename"
            if kind == "rename":
                del names[src]
            names[dst] = ino
            trace.ops.append(Op(kind, pid, path=src, dst=dst, ino=ino))
        elif name in ("unlink", "unlinkat"):
            path = _string(args[0], strings) if name == "unlink" else _string(args[1], strings)
            if name == "unlinkat":
                path = _join(fdpath(args[0]), path)
                if "AT_REMOVEDIR" in args[2]:
                    continue
            if under(path) and path in names:
                trace.ops.append(Op("unlink", pid, path=path, ino=names.pop(path)))
    return trace


def _parent(path: str) -> str:
    return str(PurePosixPath(path).parent)


def durable_by(trace: Trace) -> list[int]:
    """For each operation, the index of the first completed fsync that makes it
    durable (len(ops) when none does)."""
    ops = trace.ops
    n = len(ops)
    out = [n] * n
    for i, o in enumerate(ops):
        if o.kind == "write":
            want = {("ino", o.ino)}
        elif o.kind in ("create", "unlink"):
            want = {("dir", _parent(o.path))}
        elif o.kind == "link":
            want = {("dir", _parent(o.dst))}
        elif o.kind == "rename":
            want = {("dir", _parent(o.path)), ("dir", _parent(o.dst))}
        else:
            continue
        for j in range(i + 1, n):
            f = ops[j]
            if f.kind != "fsync":
                continue
            if ("ino", f.ino) in want and f.ino >= 0 or ("dir", f.path) in want:
                out[i] = j
                break
    return out


def replay(trace: Trace, included: int, torn: int = -1) -> dict[str, bytes]:
    """The file tree when exactly the operations in bit mask `included` reached
    the disk (operation `torn` only with the first half of its data)."""
    names: dict[str, int] = {}
    data: dict[int, bytearray] = {}
    for i, o in enumerate(trace.ops):
        if not (included >> i) & 1 and i != torn:
            continue
        if o.kind == "create":
            names[o.path] = o.ino
            data.setdefault(o.ino, bytearray())
        elif o.kind == "write":
            buf = data.setdefault(o.ino, bytearray())
            chunk = o.data[: len(o.data) // 2] if i == torn else o.data
            if len(buf) < o.offset:
                buf.extend(b"\0" * (o.offset - len(buf)))
            buf[o.offset : o.offset + len(chunk)] = chunk
        elif o.kind == "rename":
            if names.get(o.path) == o.ino:
                del names[o.path]
            names[o.dst] = o.ino
        elif o.kind == "link":
            names[o.dst] = o.ino
        elif o.kind == "unlink":
            if names.get(o.path) == o.ino:
                del names[o.path]
    return {p: bytes(data.get(ino, b"")) for p, ino in names.items()}


@dataclass(frozen=True)
class CrashState:
    files: dict[str, bytes]
    acked: frozenset[str]
    at: int  # operations completed before the power went
    how: str


def crash_states(trace: Trace, points: Iterator[int] | range | None = None) -> list[CrashState]:
    """Every distinct file tree (with the queue ids acknowledged by then) a
    power loss after each of `points` (default: every operation) may leave."""
    ops = trace.ops
    n = len(ops)
    by = durable_by(trace)
    fs_ops = [i for i, o in enumerate(ops) if o.kind not in ("ack", "fsync")]
    # One recovery run per distinct tree, checked against the most acknowledgements
    # any crash point that leaves it had given (they only grow with time).
    seen: dict[tuple[tuple[str, bytes], ...], CrashState] = {}
    for k in points if points is not None else range(n + 1):
        acked = frozenset(trace.acked(k))
        base = 0
        for i in fs_ops:
            if i < k and by[i] < k:
                base |= 1 << i
        volatile = [i for i in fs_ops if i < k and not (base >> i) & 1]
        jumpers = [i for i in volatile if ops[i].kind in ("rename", "unlink")]
        for p in range(len(volatile) + 1):
            prefix = base
            for i in volatile[:p]:
                prefix |= 1 << i
            variants = [(prefix, -1, f"prefix {p}/{len(volatile)}")]
            if p < len(volatile) and ops[volatile[p]].kind == "write":
                variants.append((prefix, volatile[p], f"prefix {p}, torn write"))
            for j in jumpers:
                if j >= (volatile[p] if p < len(volatile) else k):
                    variants.append((prefix | 1 << j, -1, f"prefix {p} + op {j} ahead"))
            for mask, torn, how in variants:
                files = replay(trace, mask, torn)
                key = tuple(sorted(files.items()))
                old = seen.get(key)
                if old is None or len(old.acked) < len(acked):
                    seen[key] = CrashState(files, acked, k, how)
    return list(seen.values())


def describe(trace: Trace, upto: int) -> str:
    """The last operations before a crash point, for a failure message."""
    lines = []
    for i, o in enumerate(trace.ops[max(0, upto - 8) : upto], start=max(0, upto - 8)):
        what = o.qid or (f"{o.path} -> {o.dst}" if o.dst else o.path)
        lines.append(f"  {i:3d} {o.kind:6s} {what}")
    return "\n".join(lines)
