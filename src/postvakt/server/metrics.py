"""The Prometheus endpoint (`[metrics] listen`): GET /metrics in the text format.

A scrape sums the counter files of every process of the node
(`postvakt.metrics`), then measures what is a level right now: the queue's
length and its oldest message per state (one directory scan, as `mailq`
does), and the POP-before-SMTP grants in force. The files are read in a
thread, so a scrape never stalls the sessions on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from postvakt.config import HostPort
from postvakt.grants import GrantStore
from postvakt.metrics_counters import NAMESPACE

log = logging.getLogger("postvakt.metrics")

# The queue states a scrape reports (tmp/ holds messages still being received).
QUEUE_STATES = ("incoming", "active", "deferred", "hold", "corrupt")


@dataclass(frozen=True)
class Levels:
    """Where the scrape-time gauges look."""

    queue_root: Path
    grants: Callable[[], GrantStore]


class LevelsCollector:
    """Gauges measured at scrape time, never stored."""

    def __init__(self, levels: Levels) -> None:
        self.levels = levels

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        length = GaugeMetricFamily(
            f"{NAMESPACE}_queue_messages", "Messages in the queue, by state", labels=["state"]
        )
        oldest = GaugeMetricFamily(
            f"{NAMESPACE}_queue_oldest_age_seconds",
            "Age of the oldest message in each queue state (0 when empty)",
            labels=["state"],
        )
        for state in QUEUE_STATES:
            n, first = 0, now
            try:
                with os.scandir(self.levels.queue_root / state) as it:
                    for entry in it:
                        try:
                            first = min(first, entry.stat().st_mtime)
                        except FileNotFoundError:  # delivered while we looked
                            continue
                        n += 1
            except FileNotFoundError:
                pass
            length.add_metric([state], n)
            oldest.add_metric([state], max(0.0, now - first) if n else 0.0)
        yield length
        yield oldest
        grants = GaugeMetricFamily(
            f"{NAMESPACE}_grants_active",
            "POP-before-SMTP grants in force, by the login that made them",
            labels=["protocol"],
        )
        counts = {"pop3": 0, "imap": 0}
        for g in self.levels.grants().all(now):
            counts[g.protocol] = counts.get(g.protocol, 0) + 1
        for protocol, n in counts.items():
            grants.add_metric([protocol], n)
        yield grants


def scrape(directory: Path, levels: Levels) -> bytes:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    registry.register(LevelsCollector(levels))
    return generate_latest(registry)


class MetricsServer:
    def __init__(self, runner: web.AppRunner) -> None:
        self._runner = runner

    @property
    def addresses(self) -> list[str]:
        return [str(HostPort(a[0], a[1])) for a in self._runner.addresses]

    async def stop(self) -> None:
        await self._runner.cleanup()


async def start_metrics(listen: HostPort, directory: Path, levels: Levels) -> MetricsServer:
    """Open the endpoint on the caller's loop; OSError (address in use, ...) goes to the caller."""

    async def handle(request: web.Request) -> web.Response:
        loop = asyncio.get_running_loop()
        body = await loop.run_in_executor(None, scrape, directory, levels)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, listen.host, listen.port, reuse_address=True)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    return MetricsServer(runner)
