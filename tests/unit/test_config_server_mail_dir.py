"""Contract keys `mail_dir` and `[server] user`/`group`: defaults, paths, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from postvakt import config
from postvakt.config import ConfigError
from postvakt.directory import Directory


def test_mail_dir_defaults_to_data_dir_mail(tmp_path: Path) -> None:
    c = config.loads('data_dir = "/var/lib/postvakt"\n')
    assert c.mail_dir is None
    assert c.mail_root == Path("/var/lib/postvakt/mail")


def test_mail_dir_relative_to_the_config_file(tmp_path: Path) -> None:
    p = tmp_path / "postvakt.toml"
    p.write_text('data_dir = "data"\nmail_dir = "shared/mail"\n')
    assert config.load(p).mail_root == tmp_path / "shared" / "mail"


def test_delivery_and_pop3_find_mailboxes_below_mail_dir(tmp_path: Path) -> None:
    c = config.loads(
        f'data_dir = "{tmp_path / "data"}"\nmail_dir = "{tmp_path / "m"}"\n'
        '[domains]\nlocal = ["pv.test"]\n'
    )
    d = Directory.for_config(c)
    try:
        assert d.maildir("Alice@PV.test") == tmp_path / "m" / "pv.test" / "alice"
    finally:
        d.close()


def test_server_user_and_group_default_to_postvakt() -> None:
    c = config.loads("")
    assert (c.server.user, c.server.group) == ("postvakt", "postvakt")
    c = config.loads('[server]\nuser = "mail"\ngroup = "vmail"\n')
    assert (c.server.user, c.server.group) == ("mail", "vmail")


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ('[server]\nuser = "root; rm"', "[server] user", "not a user or group name"),
        ('[server]\ngroup = ""', "[server] group", "not a user or group name"),
        ("[server]\nuser = 1000", "[server] user", "expected a string"),
        ('[server]\nusr = "x"', "[server] usr", "unknown key"),
        ("mail_dir = 5", "mail_dir", "expected a path"),
    ],
)
def test_bad_server_and_mail_dir_keys_name_the_key(text: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.loads(text, "site.toml")
    assert key in str(e.value) and reason in str(e.value)
