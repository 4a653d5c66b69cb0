"""Local delivery into Maildir: tmp -> new, headers, read back intact."""

from __future__ import annotations

import mailbox
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from stack import ensure_server_user, python_for

from postvakt.delivery import DeliveryError
from postvakt.delivery.maildir import deliver

MSG = b"Received: from client\r\nFrom: a@pv.test\r\nSubject: hello\r\n\r\nline one\r\n.dot\r\n\r\nend\r\n"


def test_delivers_into_new_and_reads_back(tmp_path: Path) -> None:
    md = tmp_path / "mail" / "pv.test" / "bob"
    path = deliver(md, MSG, return_path="a@pv.test", delivered_to="bob@pv.test")
    assert path.parent == md / "new"
    assert os.listdir(md / "tmp") == []
    box = mailbox.Maildir(md, create=False)
    [msg] = list(box)
    assert msg["Return-Path"] == "<a@pv.test>"
    assert msg["Delivered-To"] == "bob@pv.test"
    assert msg["Subject"] == "hello"
    assert msg.get_payload() == "line one\n.dot\n\nend\n"
    raw = path.read_bytes()
    # Return-Path and Delivered-To come first, then the message as received, in LF form.
    assert raw.startswith(
        b"Return-Path: <a@pv.test>\nDelivered-To: bob@pv.test\nReceived: from client\n"
    )
    assert b"\r" not in raw
    assert (md / "cur").is_dir()


def test_new_and_cur_removed_from_an_existing_maildir_are_made_again(tmp_path: Path) -> None:
    md = tmp_path / "bob"
    deliver(md, MSG, return_path="a@pv.test", delivered_to="bob@pv.test")
    shutil.rmtree(md / "new")
    shutil.rmtree(md / "cur")
    path = deliver(md, MSG, return_path="a@pv.test", delivered_to="bob@pv.test")
    assert path.parent == md / "new" and path.is_file()
    assert (md / "cur").is_dir()
    assert os.listdir(md / "tmp") == []


def test_null_sender_gets_empty_return_path(tmp_path: Path) -> None:
    path = deliver(tmp_path / "m", MSG, return_path="", delivered_to="bob@pv.test")
    assert path.read_bytes().startswith(b"Return-Path: <>\n")


def test_many_deliveries_have_unique_names(tmp_path: Path) -> None:
    for _ in range(50):
        deliver(tmp_path / "m", MSG, return_path="a@pv.test", delivered_to="bob@pv.test")
    assert len(mailbox.Maildir(tmp_path / "m", create=False)) == 50


def test_loop_is_detected_by_delivered_to(tmp_path: Path) -> None:
    looped = b"Delivered-To: Bob@pv.test\r\n" + MSG
    with pytest.raises(DeliveryError) as e:
        deliver(tmp_path / "m", looped, return_path="a@pv.test", delivered_to="bob@pv.test")
    assert not e.value.temporary and e.value.reply.enhanced == "5.4.6"
    # Only the header counts: the same words in the body are no loop.
    body_only = MSG + b"Delivered-To: bob@pv.test\r\n"
    deliver(tmp_path / "m", body_only, return_path="a@pv.test", delivered_to="bob@pv.test")


UNWRITABLE = """
import sys
from pathlib import Path
from postvakt.delivery import DeliveryError
from postvakt.delivery.maildir import deliver
try:
    deliver(Path(sys.argv[1]), b"Subject: x\\r\\n\\r\\nbody\\r\\n", return_path="a@pv.test",
            delivered_to="bob@pv.test")
except DeliveryError as e:
    print(e.temporary, e.reply.code, e.reply.enhanced)
else:
    print("delivered")
"""


def test_unwritable_maildir_is_a_temporary_error() -> None:
    """tmp/ without write permission: a 451 to retry, not a bounce. Root ignores
    directory permissions, so under root (as in CI) the delivery runs as an
    unprivileged system user."""
    scratch = Path(tempfile.mkdtemp(prefix="pv-maildir-"))
    try:
        os.chmod(scratch, 0o755)
        md = scratch / "m"
        for sub in ("tmp", "new", "cur"):
            (md / sub).mkdir(parents=True)
        cmd, env, user = [sys.executable], {}, {}
        if os.geteuid() == 0:
            uid, gid = ensure_server_user()
            cmd, env = python_for(uid, gid, scratch)
            user = {"user": uid, "group": gid, "extra_groups": []}
            for p in (md, *(md / sub for sub in ("tmp", "new", "cur"))):
                os.chown(p, uid, gid)
        (md / "tmp").chmod(0o500)
        r = subprocess.run(
            [*cmd, "-c", UNWRITABLE, str(md)],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            cwd="/",
            timeout=60,
            **user,  # type: ignore[arg-type]
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["True", "451", "4.3.0"]
        assert os.listdir(md / "new") == []
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_maildir_path_blocked_by_a_file_is_a_temporary_error(tmp_path: Path) -> None:
    (tmp_path / "m").write_text("not a directory")
    with pytest.raises(DeliveryError) as e:
        deliver(tmp_path / "m", MSG, return_path="a@pv.test", delivered_to="bob@pv.test")
    assert e.value.temporary and (e.value.reply.code, e.value.reply.enhanced) == (451, "4.3.0")
