"""The README's first command, as written (the venv's place moved to a temporary
directory), works with a system Python that refuses a bare `pip install` (PEP 668):
it makes a venv, installs this checkout into it and starts the server on its
embedded defaults. The second command is CI's own script."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
APT = "apt-get update && apt-get install -y python3-venv && "
EMBEDDED_PORTS = (2525, 2587, 2465, 2110, 2995)


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", text, re.S)
    assert block is not None
    return [x for x in block.group(1).splitlines() if x.strip() and not x.startswith("#")]


def test_second_command_is_the_ci_script() -> None:
    assert _readme_commands()[1] == "bash .ci/run"
    assert (REPO / ".ci" / "run").exists()


@pytest.mark.timeout(900)
def test_first_command_installs_into_a_venv_and_serves(tmp_path: Path) -> None:
    first = _readme_commands()[0]
    assert first.startswith(APT) and "/opt/postvakt/bin/pip install ." in first
    python3 = shutil.which("python3")
    assert python3 is not None
    probe = subprocess.run([python3, "-c", "import ensurepip, venv"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("python3-venv is missing here and tests do not run apt-get (the README does)")
    for port in EMBEDDED_PORTS:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                pytest.skip(f"port {port} of the embedded default is in use on this machine")
    venv = tmp_path / "opt-postvakt"
    install, _, serve = (
        first.removeprefix(APT).replace("/opt/postvakt", str(venv)).rpartition(" && ")
    )
    r = subprocess.run(
        ["bash", "-c", install], cwd=REPO, capture_output=True, text=True, timeout=840
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert serve == f"{venv}/bin/postvakt serve"
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {serve}"],
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        ready = work / "postvakt-data" / "listening.json"
        deadline = time.monotonic() + 60
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ready.exists(), proc.stdout.read() if proc.poll() is not None else "no start"
        with socket.create_connection(("127.0.0.1", 2525), timeout=10) as s:
            assert s.recv(512).startswith(b"220 ")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "Traceback" not in out
