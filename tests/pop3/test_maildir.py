"""The Maildir view POP3 uses: snapshot, UIDs, sizes, locks, removal."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from postvakt.mailbox.maildir import (
    LOCK_NAME,
    MailboxLocked,
    MaildirMailbox,
    uid_for,
    unique_name,
)


def put(md: Path, name: str, data: bytes, sub: str = "new") -> Path:
    (md / sub).mkdir(parents=True, exist_ok=True)
    p = md / sub / name
    p.write_bytes(data)
    return p


def test_snapshot_moves_new_to_cur_and_keeps_uid(tmp_path: Path) -> None:
    md = tmp_path / "alice"
    put(md, "1700000001.M1P1.host", b"Subject: a\n\nx\n")
    put(md, "1700000000.M2P1.host:2,S", b"Subject: b\r\n\r\ny\r\n", sub="cur")
    mb = MaildirMailbox.open(md)
    try:
        assert [m.uid for m in mb.messages] == ["1700000000.M2P1.host", "1700000001.M1P1.host"]
        assert sorted(os.listdir(md / "cur")) == [
            "1700000000.M2P1.host:2,S",
            "1700000001.M1P1.host:2,",
        ]
        assert os.listdir(md / "new") == []
        assert [i.size for i in mb.infos()] == [17, 17]  # LF file counted as CRLF on the wire
        assert mb.read("1700000001.M1P1.host") == b"Subject: a\n\nx\n"
        assert mb.read("no-such-uid") is None
    finally:
        mb.close()
    assert not mb.locked
    mb.close()  # idempotent


def test_virtual_size_from_name_is_trusted(tmp_path: Path) -> None:
    md = tmp_path / "alice"
    put(md, "1700000000.M1P1.host,S=10,W=12:2,", b"0123456789", sub="cur")
    mb = MaildirMailbox.open(md)
    try:
        assert mb.infos()[0].size == 12
    finally:
        mb.close()


def test_invalid_unique_names_get_stable_valid_uids() -> None:
    for name in ("has space", "x" * 71, "tab\tname", "ümlaut"):
        uid = uid_for(name)
        assert uid == uid_for(name)
        assert 1 <= len(uid) <= 70 and all(0x21 <= ord(c) <= 0x7E for c in uid)
    assert uid_for("has space") != uid_for("has  space")
    assert uid_for("1700000000.M1P1.host") == "1700000000.M1P1.host"
    assert unique_name("a.b.c:2,RS") == "a.b.c"


def test_lock_conflicts_within_one_process_and_is_released(tmp_path: Path) -> None:
    md = tmp_path / "alice"
    a = MaildirMailbox.open(md)
    with pytest.raises(MailboxLocked):
        MaildirMailbox.open(md)
    assert (md / LOCK_NAME).exists()
    a.close()
    MaildirMailbox.open(md).close()


def test_delete_tolerates_vanished_and_moved_files(tmp_path: Path) -> None:
    md = tmp_path / "alice"
    for i in range(3):
        put(md, f"170000000{i}.M{i}P1.host", f"Subject: {i}\n\n".encode())
    mb = MaildirMailbox.open(md)
    uids = [m.uid for m in mb.messages]
    (md / "cur" / f"{uids[0]}:2,").unlink()  # gone behind our back
    (md / "cur" / f"{uids[1]}:2,").rename(md / "cur" / f"{uids[1]}:2,S")  # flags changed
    assert mb.delete(uids[:2]) is True
    assert sorted(os.listdir(md / "cur")) == [f"{uids[2]}:2,"]
    mb.close()


def test_dotfiles_and_tmp_are_ignored(tmp_path: Path) -> None:
    md = tmp_path / "alice"
    put(md, ".hidden", b"x")
    put(md, "1700000000.M1P1.host", b"half written", sub="tmp")
    mb = MaildirMailbox.open(md)
    assert mb.messages == []
    mb.close()
