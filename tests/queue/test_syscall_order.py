"""D1: the order of system calls on the write paths, seen with strace.

Queue commit: fsync(queue file) -> rename into incoming/ -> fsync(incoming/).
Maildir: fsync(tmp file) -> link into new/ -> fsync(new/).
The queue manager's group of local messages: each copy's fsync(tmp file) ->
link into new/; one fsync of each new/; only then the queue files go."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from postvakt import config as C
from postvakt.directory import Directory
from postvakt.queue import Envelope, Queue, Recipient

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


GROUP_JOB = textwrap.dedent(
    """
    import json, sys
    from postvakt import config as C
    from postvakt.directory import Directory
    from postvakt.queue import Queue
    from postvakt.queue.manager import QueueManager
    config = C.from_dict(json.loads(sys.argv[1]))
    qm = QueueManager(config, Directory.for_config(config), Queue(config.data_dir / "queue"))
    for qid, outcome in qm._prepare_each(sys.argv[2:]):
        states = " ".join(f"{u.address}={u.state}" for u in outcome.status.units)
        print(qid, "finished" if outcome.finished else "kept", states)
    """
)
UNLINK = re.compile(r'unlink\("([^"]+)"\)\s+= 0$')
RENAME_FROM = re.compile(r'rename\("([^"]+)", "[^"]+"\)\s+= 0$')
FAILED_FSYNC = re.compile(r"fsync\((\d+)\)\s+= -1 EIO .*\(INJECTED\)$")


def group_job(tmp_path: Path, *inject: str) -> tuple[dict[str, str], list[str], str, Path]:
    """Three local messages in active/ (bob, bob and alice, bob), their group's
    executor job run under strace: each message's fate and states, the queue
    ids, the trace, the data directory."""
    data = tmp_path / "data"
    raw = {"hostname": "mx.pv.test", "data_dir": str(data), "domains": {"local": ["pv.test"]}}
    config = C.from_dict(raw)
    directory = Directory.for_config(config)
    for u in ("alice@pv.test", "bob@pv.test"):
        directory.add_user(u, "pw")
    directory.close()
    q = Queue(data / "queue")
    qids = []
    for rcpts in (["bob@pv.test"], ["bob@pv.test", "alice@pv.test"], ["bob@pv.test"]):
        m = q.new_message()
        m.write(b"Subject: group\r\n\r\nbody\r\n")
        env = Envelope("a@pv.test", tuple(Recipient(r) for r in rcpts), 1.0, "127.0.0.1", "h", None)
        m.commit(env)
        assert q.move(m.queue_id, "incoming", "active")
        qids.append(m.queue_id)
    trace_file = tmp_path / "trace"
    cmd = ["strace", "-f", "-o", str(trace_file)]
    cmd += ["-e", "trace=openat,fsync,fdatasync,rename,link,unlink,close", *inject]
    p = subprocess.run(
        [*cmd, sys.executable, "-c", GROUP_JOB, json.dumps(raw), *qids],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    fates = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in p.stdout.splitlines()}
    return fates, qids, trace_file.read_text(), data


def removals(trace: str, queue: Path, qids: list[str]) -> list[int]:
    """Line numbers where a queue file left active/ (unlinked or renamed)."""
    active = {str(queue / "active" / qid) for qid in qids}
    out = []
    for n, line in enumerate(trace.splitlines()):
        m = UNLINK.search(line) or RENAME_FROM.search(line)
        if m and m.group(1) in active:
            out.append(n)
    return out


def fsyncs_of(trace: str, path: Path) -> list[int]:
    """Line numbers of the successful fsyncs of `path`."""
    fds: dict[str, str] = {}
    out = []
    for n, line in enumerate(trace.splitlines()):
        line = line.split(" ", 1)[1] if line[:1].isdigit() else line
        if m := OPEN.search(line):
            fds[m.group(2)] = m.group(1)
        elif (m := FSYNC.search(line)) and fds.get(m.group(1)) == str(path):
            out.append(n)
        elif m := CLOSE.search(line):
            fds.pop(m.group(1), None)
    return out


def test_a_group_fsyncs_each_new_once_before_any_of_its_queue_files_goes(tmp_path: Path) -> None:
    fates, qids, trace, data = group_job(tmp_path)
    assert all(fates[q].startswith("finished") for q in qids), fates
    mail = data / "mail" / "pv.test"
    bob, alice = fsyncs_of(trace, mail / "bob" / "new"), fsyncs_of(trace, mail / "alice" / "new")
    assert len(bob) == 1 and len(alice) == 1  # four copies, two directories
    gone = removals(trace, data / "queue", qids)
    assert len(gone) == 3 and max(bob + alice) < min(gone)
    # Each copy: its file fsynced before its link into new/.
    ev = [e for e in events(trace) if str(mail) in e[1]]
    links = [e for e in ev if e[0] == "link"]
    assert len(links) == 4
    for kind, dst in links:
        name = Path(dst).name.split(",S=", 1)[0]
        tmp = str(Path(dst).parent.parent / "tmp" / name)
        assert ev.index(("fsync", tmp)) < ev.index((kind, dst))


def test_a_failed_fsync_of_new_keeps_the_messages_with_a_copy_there(tmp_path: Path) -> None:
    """The fifth fsync, the first of new/ after four copies, fails (a real
    EIO injected by strace): each copy into that new/ is not delivered
    (pending, tried again), so its message stays in active/; a message with
    no copy there is finished."""
    fates, qids, trace, data = group_job(tmp_path, "-e", "inject=fsync:error=EIO:when=5")
    fds: dict[str, str] = {}
    failed = ""
    for line in trace.splitlines():
        line = line.split(" ", 1)[1] if line[:1].isdigit() else line
        if m := OPEN.search(line):
            fds[m.group(2)] = m.group(1)
        elif m := FAILED_FSYNC.search(line):
            failed = fds[m.group(1)]
    user = Path(failed).parent.name  # .../mail/pv.test/<user>/new
    assert user in ("alice", "bob"), failed
    queue = Queue(data / "queue")
    for qid, rcpts in zip(qids, (["bob"], ["bob", "alice"], ["bob"]), strict=True):
        if user in rcpts:
            assert fates[qid].startswith("kept") and f"{user}@pv.test=pending" in fates[qid]
            assert queue.find(qid) == "active"
        else:
            assert fates[qid].startswith("finished") and queue.find(qid) is None
    assert f"{'alice' if user == 'bob' else 'bob'}@pv.test=done" in fates[qids[1]]
