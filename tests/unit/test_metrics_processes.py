"""Several processes of one node count into one directory, and one scrape sums
them: the node's first process starts the counts afresh, the processes it
starts (whatever way) add to them. Real processes, real files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from postvakt.metrics import MULTIPROC_ENV

# One process: enable, count two SMTP connections, then run the command in argv[2:], if any.
CHILD = """
import subprocess, sys
from pathlib import Path
from postvakt import metrics
metrics.enable(Path(sys.argv[1]))
metrics.smtpd_connect("smtp")
metrics.smtpd_connect("smtp")
metrics.delivery("sent", 1.5)
if len(sys.argv) > 2:
    subprocess.run(sys.argv[2:], check=True)
"""

SCRAPE = """
import sys
from pathlib import Path
from postvakt.server.metrics import Levels, scrape
from postvakt.grants import MemoryGrantStore
store = MemoryGrantStore()
print(scrape(Path(sys.argv[1]), Levels(Path(sys.argv[1]) / "no-queue", lambda: store)).decode())
"""


def run(*args: str, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, *args], check=True, env=env, timeout=60)


def total(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return 0.0


def scrape(directory: Path, env: dict[str, str]) -> str:
    r = subprocess.run(
        [sys.executable, "-c", SCRAPE, str(directory)],
        check=True,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return r.stdout


def test_a_started_process_adds_to_its_parents_counts(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != MULTIPROC_ENV}
    d = tmp_path / "metrics"
    # The parent counts 2, then starts a child (a new interpreter) that counts 2 more.
    run("-c", CHILD, str(d), sys.executable, "-c", CHILD, str(d), env=env)
    text = scrape(d, env)
    assert total(text, "postvakt_smtpd_connects_total", listener="smtp") == 4
    assert total(text, "postvakt_delivery_delay_seconds_count", status="sent") == 2
    assert total(text, "postvakt_queue_messages", state="deferred") == 0

    # A new start of the node (nothing inherited) begins at zero again.
    run("-c", CHILD, str(d), env=env)
    assert total(scrape(d, env), "postvakt_smtpd_connects_total", listener="smtp") == 2
