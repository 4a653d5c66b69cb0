"""`postvakt queue ...`: look at and change the queue, also while the server runs.

Every change is one rename (or unlink) in the spool, the same operation the
queue manager uses, so the two cannot tear a message apart: whichever comes
second finds the file gone and backs off.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

from postvakt.cli.common import config_option, load_config
from postvakt.queue.envelope import DONE, FAILED
from postvakt.queue.spool import ACTIVE, CORRUPT, DEFERRED, HOLD, INCOMING, CorruptEntry, Queue

LIST_STATES = (INCOMING, ACTIVE, DEFERRED, HOLD, CORRUPT)


def _queue(path: str | None) -> Queue:
    root = load_config(path).queue_root
    if not root.is_dir():
        raise click.ClickException(f"no queue in {root} (are data_dir and queue_dir right?)")
    return Queue(root)


def _age(seconds: float) -> str:
    s = int(max(0, seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def describe(q: Queue, qid: str, state: str, now: float) -> dict[str, Any]:
    """One message as a dict (the `--json` form and the source of the table)."""
    try:
        m = q.load(qid, state)
    except (CorruptEntry, OSError) as e:
        return {"id": qid, "state": state, "error": str(e)}
    st = q.read_status(qid)
    env = m.envelope
    done = {u.rcpt for u in st.units or () if u.state == DONE}
    recipients = []
    for i, r in enumerate(env.recipients):
        units = [u for u in st.units or () if u.rcpt == i]
        if not units:
            rstate = "pending"
        elif all(u.state == DONE for u in units):
            rstate = "delivered"
        elif any(u.state == FAILED for u in units):
            rstate = "failed"
        else:
            rstate = "pending"
        recipients.append({"address": r.address, "state": rstate})
    return {
        "id": qid,
        "state": state,
        "age": round(now - env.received_at, 1),
        "received_at": env.received_at,
        "sender": env.sender,
        "recipients": recipients,
        "size": m.size,
        "attempts": st.attempts,
        "next_try": st.next_try if state == DEFERRED else None,
        "last_error": st.last_error,
        "hold_reason": env.hold,
        "client_ip": env.client_ip,
        "login": env.login,
        "delivered": len(done),
    }


@click.group("queue")
def queue() -> None:
    """Look at and manage the mail queue."""


@queue.command("list")
@config_option
@click.option("--held", is_flag=True, help="only held messages")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def list_cmd(config_path: str | None, held: bool, as_json: bool) -> None:
    """List queued messages: id, age, sender, recipients, state, last error."""
    q = _queue(config_path)
    now = time.time()
    rows = [
        describe(q, qid, state, now)
        for state in ((HOLD,) if held else LIST_STATES)
        for qid in q.ids(state)
    ]
    rows.sort(key=lambda r: r["id"])
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    if not rows:
        click.echo("Mail queue is empty")
        return
    for r in rows:
        if "error" in r:
            click.echo(f"{r['id']}  {r['state']:<8}  unreadable: {r['error']}")
            continue
        pending = [x["address"] for x in r["recipients"] if x["state"] == "pending"]
        rcpts = ", ".join(pending or [x["address"] for x in r["recipients"]])
        line = f"{r['id']}  {_age(r['age']):>4}  {r['state']:<8}  <{r['sender']}> -> {rcpts}"
        why = r["last_error"] or (f"held: {r['hold_reason']}" if r["hold_reason"] else "")
        click.echo(line + (f"\n    {why}" if why else ""))
    click.echo(f"-- {len(rows)} message(s)")


def _find(q: Queue, qid: str) -> str:
    state = q.find(qid)
    if state is None:
        raise click.ClickException(f"{qid}: no such message in the queue")
    return state


@queue.command("show")
@config_option
@click.argument("queue_id")
@click.option("--body", is_flag=True, help="print the whole message, not only its header")
def show_cmd(config_path: str | None, queue_id: str, body: bool) -> None:
    """Show one message: envelope, per-recipient status, header."""
    q = _queue(config_path)
    qid = queue_id.upper()
    state = _find(q, qid)
    info = describe(q, qid, state, time.time())
    click.echo(json.dumps(info, indent=2, ensure_ascii=False))
    st = q.read_status(qid)
    for u in st.units or ():
        r = u.last_reply
        click.echo(
            f"  {u.address}: {u.state} attempts={u.attempts} relay={u.relay or '-'}"
            + (f" reply={str(r)!r}" if r else "")
        )
    try:
        data = q.read_body(q.load(qid, state))
    except (CorruptEntry, OSError) as e:
        raise click.ClickException(f"{qid}: {e}") from None
    if not body:
        end = data.find(b"\r\n\r\n")
        data = data if end < 0 else data[: end + 2]
    click.echo("")
    click.echo(data.decode("utf-8", "replace").replace("\r\n", "\n"), nl=False)


@queue.command("retry")
@config_option
@click.argument("queue_id", required=False)
@click.option("--all", "all_", is_flag=True, help="every deferred message")
def retry_cmd(config_path: str | None, queue_id: str | None, all_: bool) -> None:
    """Try a deferred message (or all of them) now."""
    q = _queue(config_path)
    if all_ == bool(queue_id):
        raise click.UsageError("give a queue id or --all")
    if all_:
        n = sum(q.retry(qid) for qid in q.ids(DEFERRED))
        click.echo(f"{n} message(s) scheduled for delivery now")
        return
    qid = (queue_id or "").upper()
    state = _find(q, qid)
    if state in (INCOMING, ACTIVE):
        click.echo(f"{qid}: already being delivered")
    elif state != DEFERRED:
        raise click.ClickException(f"{qid}: is in state {state}; use `queue release` for held mail")
    elif q.retry(qid):
        click.echo(f"{qid}: scheduled for delivery now")
    else:
        click.echo(f"{qid}: already being delivered")


@queue.command("hold")
@config_option
@click.argument("queue_id")
def hold_cmd(config_path: str | None, queue_id: str) -> None:
    """Stop delivering a message until it is released."""
    q = _queue(config_path)
    qid = queue_id.upper()
    state = _find(q, qid)
    if state == HOLD:
        click.echo(f"{qid}: already held")
    elif state == CORRUPT or not q.hold(qid):
        raise click.ClickException(f"{qid}: cannot be held (state {q.find(qid) or 'gone'})")
    else:
        click.echo(f"{qid}: held")


@queue.command("release")
@config_option
@click.argument("queue_id")
def release_cmd(config_path: str | None, queue_id: str) -> None:
    """Deliver a held message."""
    q = _queue(config_path)
    qid = queue_id.upper()
    state = _find(q, qid)
    if state != HOLD or not q.release(qid):
        raise click.ClickException(f"{qid}: is not held (state {q.find(qid) or 'gone'})")
    click.echo(f"{qid}: released")


@queue.command("delete")
@config_option
@click.argument("queue_id")
def delete_cmd(config_path: str | None, queue_id: str) -> None:
    """Remove a message from the queue without delivering it or bouncing it."""
    q = _queue(config_path)
    qid = queue_id.upper()
    _find(q, qid)
    if not q.delete(qid):
        raise click.ClickException(f"{qid}: already gone")
    click.echo(f"{qid}: deleted")
