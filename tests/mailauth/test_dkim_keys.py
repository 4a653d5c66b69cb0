"""`postvakt dkim keygen` and `show` beyond the first key: who owns the key file,
the selector it picks, and several selectors of one domain (a key rotation),
each signature checked by Perl's Mail::DKIM against NSD."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest
from mailauth_support import perl_verify, require_nsd
from zones import message

from dnsserver import NsdServer
from postvakt.config import load
from postvakt.mailauth.signing import Signer, sign
from postvakt.policy.roads import GENERATED
from support import LOCAL_DOMAIN, base_config, postvakt, to_toml

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="handing a file to another user needs root")
# A user and group every Debian machine has, standing in for [server] user.
OTHER = pwd.getpwnam("nobody")


def write_config(tmp_path: Path, **sections: object) -> Path:
    path = tmp_path / "postvakt.toml"
    path.write_text(to_toml(base_config(tmp_path / "data", **sections)))  # type: ignore[arg-type]
    (tmp_path / "data").mkdir(exist_ok=True)
    return path


@as_root
def test_keygen_as_root_gives_the_key_to_the_server_user(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path,
        server={"drop_privileges": True, "user": "nobody", "group": "nogroup"},
        dkim={"sign": {LOCAL_DOMAIN: "s1"}},
    )
    postvakt("dkim", "keygen", LOCAL_DOMAIN, config=cfg)
    key = tmp_path / "data" / "dkim" / f"{LOCAL_DOMAIN}.s1.key"
    st = key.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (OTHER.pw_uid, 0o600)
    assert key.parent.stat().st_uid == OTHER.pw_uid


@as_root
def test_keygen_as_root_without_privilege_drop_follows_the_data_dir(tmp_path: Path) -> None:
    """A server that does not drop privileges runs as whoever owns its data directory."""
    cfg = write_config(tmp_path, dkim={"sign": {LOCAL_DOMAIN: "s1"}})
    os.chown(tmp_path / "data", OTHER.pw_uid, OTHER.pw_gid)
    postvakt("dkim", "keygen", LOCAL_DOMAIN, config=cfg)
    key = tmp_path / "data" / "dkim" / f"{LOCAL_DOMAIN}.s1.key"
    assert (key.stat().st_uid, key.stat().st_mode & 0o777) == (OTHER.pw_uid, 0o600)


def test_several_selectors_rotate_and_each_signature_verifies(tmp_path: Path) -> None:
    """[dkim] sign names the old and the new key: keygen fills them in order, show
    prints both records, mail carries both signatures, and each verifies."""
    require_nsd()
    nsd = NsdServer(tmp_path / "dns", {LOCAL_DOMAIN: ["@ IN A 127.0.0.1"]})
    try:
        cfg = write_config(
            tmp_path,
            dns={"servers": [nsd.server], "timeout": "5s"},
            dkim={"sign": {LOCAL_DOMAIN: ["old2025", "new2026"]}},
        )
        first = postvakt("dkim", "keygen", LOCAL_DOMAIN, config=cfg).stdout.strip()
        second = postvakt("dkim", "keygen", LOCAL_DOMAIN, config=cfg).stdout.strip()
        assert first.startswith(f"old2025._domainkey.{LOCAL_DOMAIN}. IN TXT ")
        assert second.startswith(f"new2026._domainkey.{LOCAL_DOMAIN}. IN TXT ")
        again = postvakt("dkim", "keygen", LOCAL_DOMAIN, config=cfg, check=False)
        assert again.returncode == 2 and "has a key: name a new --selector" in again.stderr
        assert "Traceback" not in again.stderr

        nsd.set_zone(LOCAL_DOMAIN, ["@ IN A 127.0.0.1", first, second])
        nsd.reload()
        shown = postvakt("dkim", "show", LOCAL_DOMAIN, "--check", config=cfg)
        assert first in shown.stdout and second in shown.stdout
        assert shown.stdout.count("check: ok:") == 2

        signer = Signer.load(load(cfg))
        data = message(f"postmaster@{LOCAL_DOMAIN}", "someone@other.example", "rotation")
        keys, why = signer.plan(GENERATED, data)
        assert [k.selector for k in keys] == ["old2025", "new2026"], why
        lines = perl_verify(sign(data, keys), nsd.port)
        assert lines[0] == "pass", lines
        assert sorted(lines[1:]) == [
            f"pass d={LOCAL_DOMAIN} s=new2026 a=rsa-sha256",
            f"pass d={LOCAL_DOMAIN} s=old2025 a=rsa-sha256",
        ]

        # The old key withdrawn from DNS first (as a rotation ends): its signature
        # fails, the new one still passes, and `show --check` names the missing one.
        nsd.set_zone(LOCAL_DOMAIN, ["@ IN A 127.0.0.1", second])
        nsd.reload()
        lines = perl_verify(sign(data, keys), nsd.port)
        assert lines[0] == "pass", lines  # one good signature is enough
        assert any(line.startswith("pass d=pv.test s=new2026") for line in lines[1:]), lines
        assert not any(line.startswith("pass d=pv.test s=old2025") for line in lines[1:]), lines
        shown = postvakt("dkim", "show", LOCAL_DOMAIN, "--check", config=cfg, check=False)
        assert shown.returncode == 1
        assert "check: MISSING: old2025._domainkey.pv.test" in shown.stdout
    finally:
        nsd.cleanup()


@pytest.mark.parametrize("selector", ["../../x", "a/b", "s 1", "-s", "s_1", ""])
def test_a_selector_that_is_no_dns_label_is_refused(tmp_path: Path, selector: str) -> None:
    """The selector names the key file and a DNS name: one line, and nothing written."""
    cfg = write_config(tmp_path, dkim={"sign": {LOCAL_DOMAIN: "s1"}})
    for args in (["keygen"], ["show"]):
        r = postvakt("dkim", *args, LOCAL_DOMAIN, "--selector", selector, config=cfg, check=False)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "is not a valid selector" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "data" / "dkim").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "postvakt.toml"]


def test_key_dir_moves_the_keys_for_keygen_show_and_the_signer(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    cfg = write_config(tmp_path, dkim={"sign": {LOCAL_DOMAIN: "s1"}, "key_dir": str(keys)})
    record = postvakt("dkim", "keygen", LOCAL_DOMAIN, config=cfg).stdout.strip()
    assert (keys / f"{LOCAL_DOMAIN}.s1.key").stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "data" / "dkim").exists()
    assert postvakt("dkim", "show", LOCAL_DOMAIN, config=cfg).stdout.strip() == record
    signer = Signer.load(load(cfg))
    assert signer.problems == () and [k.selector for k in signer.keys[LOCAL_DOMAIN]] == ["s1"]
