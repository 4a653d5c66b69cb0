"""`postvakt explain`: the live policy run offline, on a real config, directory and grant store."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from postvakt.cli import main
from postvakt.cli.explain import explain
from postvakt.config import Config, load
from postvakt.diagnose.explain import explain_json, explain_text
from postvakt.directory import Directory
from postvakt.grants import MemoryGrantStore, SqliteGrantStore

CONFIG = """\
hostname = "mx.pv.test"
data_dir = "data"

[domains]
local = ["pv.test"]

[relay]
networks = ["127.0.0.1/32"]
pop_before_smtp = "30m"

[store]
state = "{store}"
"""


def write_config(tmp_path: Path, store: str = "memory") -> Path:
    path = tmp_path / "postvakt.toml"
    path.write_text(CONFIG.format(store=store))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Config]:
    path = write_config(tmp_path_factory.mktemp("explain"))
    config = load(path)
    d = Directory.for_config(config)
    d.add_user("alice@pv.test", "secret")
    d.add_user("bob@pv.test", "secret")
    d.close()
    return path, config


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(explain, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout


def test_outside_client_is_refused_with_every_road(setup: tuple[Path, Config]) -> None:
    path, _ = setup
    code, out = run(
        "--config",
        str(path),
        "--client",
        "127.0.0.2",
        "--from",
        "x@other.example",
        "--to",
        "v@other.example",
    )
    assert code == 1
    for words in (
        "permit_authenticated",
        "not logged in (SMTP AUTH) on port smtp",
        "no POP3 login from 127.0.0.2 in the last 30 minutes",
        "client 127.0.0.2 is not in networks 127.0.0.1/32",
        "reject_unauth_destination",
        "S: 250 2.1.0 Ok",
        "S: 550 5.7.1 <v@other.example>: Relaying denied",
        "result: refused",
    ):
        assert words in out


def test_trusted_network_relays(setup: tuple[Path, Config]) -> None:
    path, _ = setup
    code, out = run(
        "--config",
        str(path),
        "--client",
        "127.0.0.1",
        "--from",
        "x@other.example",
        "--to",
        "v@other.example",
    )
    assert code == 0
    assert "=> PERMIT by permit_networks" in out
    assert "S: 250 2.1.5 Ok" in out


def test_authenticated_user_on_submission(setup: tuple[Path, Config]) -> None:
    path, _ = setup
    args = [
        "--config",
        str(path),
        "--client",
        "192.0.2.7",
        "--port",
        "submission",
        "--auth",
        "Alice@PV.test",
    ]
    code, out = run(*args, "--from", "alice@pv.test", "--to", "v@other.example")
    assert code == 0 and "permit_authenticated" in out
    code, out = run(*args, "--from", "bob@pv.test", "--to", "v@other.example")
    assert code == 1
    assert (
        "S: 553 5.7.1 <bob@pv.test>: Sender address rejected: not owned by user alice@pv.test"
        in out
    )
    assert "(not reached: an earlier command was refused)" in out


def test_submission_without_auth_gets_530(setup: tuple[Path, Config]) -> None:
    path, _ = setup
    code, out = run(
        "--config",
        str(path),
        "--client",
        "192.0.2.7",
        "--port",
        "submission",
        "--from",
        "alice@pv.test",
    )
    assert code == 1
    assert "S: 530 5.7.0 Authentication required" in out


def test_unknown_auth_user_is_noted(setup: tuple[Path, Config]) -> None:
    path, _ = setup
    _, out = run(
        "--config",
        str(path),
        "--client",
        "192.0.2.7",
        "--port",
        "submission",
        "--auth",
        "mallory@pv.test",
    )
    assert "note: mallory@pv.test is not a user" in out


def test_header_from_is_checked(setup: tuple[Path, Config]) -> None:
    path, _ = setup
    code, out = run(
        "--config", str(path), "--client", "192.0.2.7", "--port", "submission", "--auth", "alice@pv.test",
        "--from", "alice@pv.test", "--to", "bob@pv.test", "--header-from", "Bob <bob@pv.test>",
    )  # fmt: skip
    assert code == 1
    assert "S: 550 5.7.1 From: header <bob@pv.test> not owned by user alice@pv.test" in out


def test_json_output(setup: tuple[Path, Config]) -> None:
    path, _ = setup
    code, out = run(
        "--config", str(path), "--client", "127.0.0.2", "--from", "<>", "--to", "alice@pv.test",
        "--to", "v@other.example", "--json",
    )  # fmt: skip
    assert code == 1
    data = json.loads(out)
    assert data["accepted"] is False and data["exit_code"] == 1
    assert data["client"]["ip"] == "127.0.0.2" and data["client"]["login"] is None
    mail, local, foreign = data["checks"]
    assert mail["rule"] == "null_sender" and mail["reply"] == ["250 2.1.0 Ok"]
    assert local["verdict"] == "permit" and local["rule"] == "local_domain"
    assert foreign["verdict"] == "reject"
    assert [s["rule"] for s in foreign["trace"]][-1] == "reject_unauth_destination"
    assert foreign["reply"] == ["550 5.7.1 <v@other.example>: Relaying denied"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--client", "999.1.1.1", "--to", "v@other.example"], "'999.1.1.1' is not an IP address"),
        (
            ["--client", "127.0.0.2", "--to", "v@other.example@pv.test"],
            "more than one @ in address",
        ),
        (["--client", "127.0.0.2", "--to", "v"], "need fully-qualified address"),
        (["--client", "127.0.0.2", "--from", "a@b@c"], "--from"),
        (["--client", "127.0.0.2", "--to", "v@exämple.test"], "553 5.6.7"),
        (["--client", "127.0.0.2", "--header-from", "x <a@b@c>"], "--header-from"),
        (["--client", "127.0.0.2", "--port", "pop3"], "pop3"),
        (["--to", "v@other.example"], "--client"),
    ],
)
def test_bad_input_is_a_usage_error_not_a_traceback(
    setup: tuple[Path, Config], args: list[str], words: str
) -> None:
    path, _ = setup
    result = CliRunner().invoke(explain, ["--config", str(path), *args])
    assert result.exit_code == 2
    assert words in result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_bad_config_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[relay]\nnetwork = ["10.0.0.0/8"]\n')
    result = CliRunner().invoke(explain, ["--config", str(path), "--client", "127.0.0.2"])
    assert result.exit_code != 0
    assert "network" in result.output and "unknown key" in result.output


def test_grant_from_sqlite_store(tmp_path: Path) -> None:
    path = write_config(tmp_path, store="sqlite")
    config = load(path)
    Directory.for_config(config).close()
    SqliteGrantStore(config.data_dir / "grants.sqlite3").grant(
        "127.0.0.9", "alice@pv.test", time.time() + 600
    )
    code, out = run("--config", str(path), "--client", "127.0.0.9", "--to", "v@other.example")
    assert code == 0
    assert "=> PERMIT by permit_pop_before_smtp" in out
    assert "POP3 login by alice@pv.test from 127.0.0.9" in out
    code, _ = run("--config", str(path), "--client", "127.0.0.10", "--to", "v@other.example")
    assert code == 1


def test_pop_login_what_if(setup: tuple[Path, Config]) -> None:
    path, _ = setup
    code, out = run(
        "--config", str(path), "--client", "198.51.100.4", "--pop-login", "alice@pv.test", "--to", "v@other.example"
    )  # fmt: skip
    assert code == 0
    assert "assuming alice@pv.test logged in to POP3 from 198.51.100.4" in out


def test_no_directory_yet_is_noted_and_not_created(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    code, out = run("--config", str(path), "--client", "127.0.0.2", "--to", "alice@pv.test")
    assert code == 1
    assert "no user database" in out
    assert "550 5.1.1 <alice@pv.test>: Recipient address rejected: User unknown" in out
    assert not (tmp_path / "data" / "directory.sqlite3").exists()


def test_functions_with_a_memory_grant_store(setup: tuple[Path, Config]) -> None:
    _, config = setup
    now = 5_000_000.0
    store = MemoryGrantStore()
    store.grant("127.0.0.5", "bob@pv.test", now + 60)
    d = Directory.for_config(config)
    try:
        text, code = explain_text(
            config, d, store, client_ip="127.0.0.5", login=None, port="smtp",
            mail_from="bob@pv.test", rcpts=["v@other.example"], header_from="Bob <bob@pv.test>", now=now,
        )  # fmt: skip
        assert code == 0, text
        assert "POP3 login by bob@pv.test from 127.0.0.5, valid for 60 seconds more" in text
        data = explain_json(
            config, d, store, client_ip="127.0.0.5", login=None, port="smtp",
            mail_from="bob@pv.test", rcpts=["v@other.example"], header_from=None, now=now + 61,
        )  # fmt: skip
        assert data["exit_code"] == 1
        assert data["client"]["grant"] is None
    finally:
        d.close()


def test_registered_in_the_postvakt_command(setup: tuple[Path, Config]) -> None:
    path, _ = setup
    result = CliRunner().invoke(
        main, ["explain", "--config", str(path), "--client", "127.0.0.2", "--to", "v@other.example"]
    )
    assert result.exit_code == 1
    assert "Relaying denied" in result.output
