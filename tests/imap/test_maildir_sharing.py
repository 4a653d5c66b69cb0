"""postvakt's POP3 view of a Maildir that Dovecot's IMAP shares (no Dovecot process needed).

What Dovecot does to a Maildir is done here by hand, at the worst moments:
it renames files to set flags (only the info part after ':2,'), keeps its own
files beside new/ and cur/, and makes folders as .Name/ directories.
"""

from __future__ import annotations

import os
from pathlib import Path

from postvakt.mailbox.maildir import MaildirMailbox, StoredMessage, ensure_maildir


def put(root: Path, name: str, body: bytes = b"Subject: x\n\nhello\n") -> None:
    ensure_maildir(root)
    (root / "new" / name).write_bytes(body)


def test_dovecot_files_and_folders_are_not_messages(tmp_path: Path) -> None:
    put(tmp_path, "1700000000.M1P1Q1.host")
    for name in ("dovecot-uidlist", "dovecot.index", "dovecot.index.log", "dovecot-keywords"):
        (tmp_path / name).write_bytes(b"3 V1 N2\n")
    (tmp_path / ".Trash" / "cur").mkdir(parents=True)
    (tmp_path / ".Trash" / "cur" / "1700000001.M2P2Q2.host:2,S").write_bytes(b"x\n")
    (tmp_path / "cur" / ".hidden").write_bytes(b"x\n")
    mb = MaildirMailbox.open(tmp_path)
    try:
        assert [m.uid for m in mb.messages] == ["1700000000.M1P1Q1.host"]
    finally:
        mb.close()


def test_uidl_is_the_name_before_the_info_part_whatever_the_flags(tmp_path: Path) -> None:
    put(tmp_path, "1700000000.M1P1Q1.host,S=19,W=22")
    first = MaildirMailbox.open(tmp_path)
    uid = first.messages[0].uid
    first.close()
    (cur,) = (tmp_path / "cur").iterdir()
    os.rename(cur, tmp_path / "cur" / "1700000000.M1P1Q1.host,S=19,W=22:2,FRS")
    again = MaildirMailbox.open(tmp_path)
    try:
        assert [m.uid for m in again.messages] == [uid] == ["1700000000.M1P1Q1.host,S=19,W=22"]
        assert again.read(uid) == b"Subject: x\n\nhello\n"
    finally:
        again.close()


class RenamedAtTheWorstMoment(MaildirMailbox):
    """Dovecot sets a flag right after we found the file and before we unlink it."""

    renames = 0

    def _current_path(self, m: StoredMessage) -> Path | None:
        p = super()._current_path(m)
        if p is not None and self.renames < 2:
            self.renames += 1
            flagged = p.with_name(f"{m.name}:2,{'S' * self.renames}")
            os.rename(p, flagged)
        return p  # the name we found, now stale


def test_pop3_delete_follows_a_message_imap_renamed_between_lookup_and_unlink(
    tmp_path: Path,
) -> None:
    """A POP3 DELE must delete; before the fix the vanished name counted as deleted and
    the message, renamed by Dovecot, stayed in the mailbox."""
    put(tmp_path, "1700000000.M1P1Q1.host")
    opened = MaildirMailbox.open(tmp_path)
    mb = RenamedAtTheWorstMoment(opened.path, opened._lock_fd or -1, opened.messages)
    try:
        assert mb.delete([mb.messages[0].uid]) is True
        assert mb.renames == 2
        assert list((tmp_path / "cur").iterdir()) == []
    finally:
        opened.close()
