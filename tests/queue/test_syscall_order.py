"""D1: the order of system calls on the write paths, seen with strace.

Queue commit: fsync(queue file) -> rename into incoming/ -> fsync(incoming/).
Maildir: fsync(tmp file) -> link into new/ -> fsync(new/)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from postvakt.queue import Envelope, Queue, Recipient
    from postvakt.delivery.maildir import deliver
    root = Path(sys.argv[1])
    q = Queue(root / "queue")
    m = q.new_message()
    m.write(b"Subject: order\\r\\n\\r\\nbody\\r\\n")
    m.commit(Envelope("a@pv.test", (Recipient("b@pv.test"),), 1.0, "127.0.0.1", "h", None))
    print(m.queue_id)
    print(deliver(root / "md", b"Subject: order\\r\\n\\r\\nbody\\r\\n", return_path="a@pv.test", delivered_to="b@pv.test").name)
    """
)
OPEN = re.compile(r'openat\(AT_FDCWD, "([^"]+)", .*\) = (\d+)$')
FSYNC = re.compile(r"f(?:data)?sync\((\d+)\)\s+= 0$")
RENAME = re.compile(r'(rename|link)\("([^"]+)", "([^"]+)"\)\s+= 0$')
CLOSE = re.compile(r"close\((\d+)\)\s+= 0$")


def events(trace: str) -> list[tuple[str, str]]:
    """("fsync", path) / ("rename", dst) / ("link", dst), in order."""
    fds: dict[str, str] = {}
    out = []
    for line in trace.splitlines():
        line = line.split(" ", 1)[1] if line[:1].isdigit() else line
        if m := OPEN.search(line):
            fds[m.group(2)] = m.group(1)
        elif m := FSYNC.search(line):
            out.append(("fsync", fds.get(m.group(1), "?")))
        elif m := RENAME.search(line):
            out.append((m.group(1), m.group(3)))
        elif m := CLOSE.search(line):
            fds.pop(m.group(1), None)
    return out


def test_fsync_rename_fsync_order(tmp_path: Path) -> None:
    trace_file = tmp_path / "trace"
    p = subprocess.run(
        [
            "strace",
            "-f",
            "-o",
            str(trace_file),
            "-e",
            "trace=openat,fsync,fdatasync,rename,link,close",
            sys.executable,
            "-c",
            SCRIPT,
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    qid, mail_name = p.stdout.split()
    ev = [e for e in events(trace_file.read_text()) if str(tmp_path) in e[1]]
    q = tmp_path / "queue"
    queue_steps = [e for e in ev if qid in e[1] or e[1] == str(q / "incoming")]
    assert queue_steps == [
        ("fsync", str(q / "tmp" / qid)),
        ("rename", str(q / "incoming" / qid)),
        ("fsync", str(q / "incoming")),
    ]
    md = tmp_path / "md"
    # The name in new/ is the tmp/ name with the sizes appended (",S=...,W=...").
    tmp_name = mail_name.split(",S=", 1)[0]
    mail_steps = [e for e in ev if tmp_name in e[1] or e[1] == str(md / "new")]
    assert mail_steps == [
        ("fsync", str(md / "tmp" / tmp_name)),
        ("link", str(md / "new" / mail_name)),
        ("fsync", str(md / "new")),
    ]
