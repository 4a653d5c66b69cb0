"""`postvakt queue` commands on a queue directory (no server needed)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from click.testing import CliRunner

from postvakt.cli.queue import queue
from postvakt.queue import Envelope, Queue, Recipient


def setup(tmp_path: Path) -> tuple[Path, Queue]:
    cfg = tmp_path / "postvakt.toml"
    cfg.write_text(
        f'hostname = "mx.pv.test"\ndata_dir = "{tmp_path / "data"}"\n[domains]\nlocal = ["pv.test"]\n'
    )
    return cfg, Queue(tmp_path / "data" / "queue")


def commit(q: Queue, subject: str, hold: str | None = None) -> str:
    m = q.new_message()
    m.write(f"Subject: {subject}\r\n\r\nbody\r\n".encode())
    m.commit(
        Envelope(
            "alice@pv.test",
            (Recipient("bob@x.example"),),
            time.time() - 7200,
            "127.0.0.1",
            "h",
            "alice@pv.test",
            hold=hold,
        )
    )
    return m.queue_id


def test_list_show_and_corrupt_entries(tmp_path: Path) -> None:
    cfg, q = setup(tmp_path)
    run = CliRunner()
    assert "Mail queue is empty" in run.invoke(queue, ["list", "--config", str(cfg)]).output
    a = commit(q, "one")
    b = commit(q, "two", hold="outbound limit for alice@pv.test")
    bad = commit(q, "three")
    q.path("incoming", bad).write_bytes(b"garbage")
    out = run.invoke(queue, ["list", "--config", str(cfg)])
    assert out.exit_code == 0, out.output
    assert f"{a}    2h  incoming  <alice@pv.test> -> bob@x.example" in out.output
    assert "held: outbound limit for alice@pv.test" in out.output
    assert f"{bad}  incoming  unreadable" in out.output
    rows = json.loads(run.invoke(queue, ["list", "--json", "--held", "--config", str(cfg)]).stdout)
    assert [r["id"] for r in rows] == [b] and rows[0]["hold_reason"].startswith("outbound")
    shown = run.invoke(queue, ["show", a.lower(), "--config", str(cfg)])
    assert (
        shown.exit_code == 0
        and "Subject: one" in shown.output
        and "body" not in shown.output.split("Subject: one")[1]
    )
    assert "body" in run.invoke(queue, ["show", a, "--body", "--config", str(cfg)]).output


def test_errors_are_one_line_messages(tmp_path: Path) -> None:
    cfg, q = setup(tmp_path)
    run = CliRunner()
    r = run.invoke(queue, ["show", "0123456789ABCDEF", "--config", str(cfg)])
    assert r.exit_code == 1 and "no such message" in r.output
    r = run.invoke(queue, ["retry", "--config", str(cfg)])
    assert r.exit_code == 2 and "give a queue id or --all" in r.output
    qid = commit(q, "x")
    r = run.invoke(queue, ["release", qid, "--config", str(cfg)])
    assert r.exit_code == 1 and "is not held" in r.output
    r = run.invoke(queue, ["list", "--config", str(tmp_path / "missing.toml")])
    assert r.exit_code == 1 and "no such file" in r.output
    other = tmp_path / "other.toml"
    other.write_text(f'data_dir = "{tmp_path / "nowhere"}"\n')
    r = run.invoke(queue, ["list", "--config", str(other)])
    assert r.exit_code == 1 and "no queue in" in r.output
    assert not (tmp_path / "nowhere").exists()  # looking creates nothing


def test_commands_that_change_nothing_exit_non_zero(tmp_path: Path) -> None:
    """`queue retry` of a message in active/ said "already being delivered" and exited 0."""
    cfg, q = setup(tmp_path)
    run = CliRunner()
    waiting = commit(q, "waiting")
    r = run.invoke(queue, ["retry", waiting, "--config", str(cfg)])
    assert r.exit_code == 1 and "waiting for delivery already" in r.output
    busy = commit(q, "busy")
    assert q.move(busy, "incoming", "active")
    r = run.invoke(queue, ["retry", busy, "--config", str(cfg)])
    assert r.exit_code == 1 and "being delivered now" in r.output
    r = run.invoke(queue, ["retry", "--all", "--config", str(cfg)])
    assert r.exit_code == 1 and "no deferred message" in r.output
    held = commit(q, "held", hold="admin")
    r = run.invoke(queue, ["hold", held, "--config", str(cfg)])
    assert r.exit_code == 1 and "already held" in r.output
    assert q.move(waiting, "incoming", "deferred")
    r = run.invoke(queue, ["retry", waiting, "--config", str(cfg)])
    assert r.exit_code == 0 and "scheduled" in r.output and q.find(waiting) == "incoming"
