"""`postvakt init --system` (under --root, so that no test writes the real /etc): the
usual places with their owners and modes, the system user, and a systemd unit that
`systemd-analyze verify` accepts; the shipped contrib/systemd/postvakt.service is
the same unit."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from postvakt.cli.system import SHIPPED_COMMAND, unit_text
from support import postvakt

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "contrib" / "systemd" / "postvakt.service"

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="--system sets owners and adds a user: only root may"
)


def _ids(root: Path, name: str) -> tuple[int, int]:
    for line in (root / "etc" / "passwd").read_text().splitlines():
        parts = line.split(":")
        if parts[0] == name:
            return int(parts[2]), int(parts[3])
    raise AssertionError(f"no {name} in {root}/etc/passwd")


def _owner_mode(p: Path) -> tuple[int, int, int]:
    st = p.stat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


@needs_root
def test_init_system_writes_places_owners_modes_user_and_unit(tmp_path: Path) -> None:
    root = tmp_path / "root"
    r = postvakt("init", "--system", "--root", str(root), "--domain", "proseware.example")
    assert "created system user postvakt" in r.stdout
    uid, gid = _ids(root, "postvakt")
    assert (root / "etc" / "group").read_text().startswith("postvakt:")
    conf = root / "etc/postvakt/postvakt.toml"
    raw = tomllib.loads(conf.read_text())
    assert raw["data_dir"] == "/var/lib/postvakt"
    assert raw["queue_dir"] == "/var/spool/postvakt"
    assert raw["domains"]["local"] == ["proseware.example"]
    assert _owner_mode(root / "etc/postvakt") == (0, gid, 0o750)
    assert _owner_mode(conf) == (0, gid, 0o640)
    assert _owner_mode(root / "var/lib/postvakt") == (uid, gid, 0o750)
    assert _owner_mode(root / "var/spool/postvakt") == (uid, gid, 0o750)
    assert _owner_mode(root / "var/lib/postvakt/tls/key.pem") == (uid, gid, 0o600)
    unit = root / "etc/systemd/system/postvakt.service"
    assert _owner_mode(unit) == (0, 0, 0o644)
    text = unit.read_text()
    assert "Type=notify" in text and "ExecReload=/bin/kill -HUP $MAINPID" in text
    assert "serve --config /etc/postvakt/postvakt.toml" in text
    # A second run keeps the user and the files (idempotent), a different one needs --force.
    again = postvakt("init", "--system", "--root", str(root), "--domain", "x.example", check=False)
    assert again.returncode != 0 and "exists already" in again.stderr
    assert "proseware.example" in conf.read_text()


def test_init_system_refuses_a_dir_and_root_without_system(tmp_path: Path) -> None:
    r = postvakt("init", "--system", "--dir", str(tmp_path), "--domain", "a.example", check=False)
    assert r.returncode == 2 and "--system writes /etc/postvakt" in r.stderr
    r = postvakt("init", "--root", str(tmp_path), "--domain", "a.example", check=False)
    assert r.returncode == 2


def test_shipped_unit_is_the_installed_one() -> None:
    assert SHIPPED.read_text() == unit_text(SHIPPED_COMMAND)


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian's systemd package)")
    # The unit as `init --system` installs it: ExecStart names a postvakt that exists here
    # (verify checks that the command is executable).
    installed = shutil.which("postvakt") or str(Path(sys.executable).parent / "postvakt")
    assert Path(installed).exists()
    unit = tmp_path / "postvakt.service"
    unit.write_text(SHIPPED.read_text().replace(SHIPPED_COMMAND, installed))
    r = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    problems = [x for x in (r.stdout + r.stderr).splitlines() if "postvakt.service" in x]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr
