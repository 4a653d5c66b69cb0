#!/usr/bin/env python3
"""The help page under load: `wrk` against a real `postvakt serve` with [web] on.

    python3 bench/web_help.py              # 100 connections, 15 s, GET /help
    python3 bench/web_help.py --seconds 5  # shorter

Target (issue 15): the page is served in under 50 ms at 100 concurrent
requests on this machine; the run prints wrk's latency distribution and
whether the 99th percentile is under the target. Each request is the whole
page as a first visit renders it: language from Accept-Language, the live
mail settings, a fresh CSRF token and cookie. The mail listeners run in the
same process, idle.

Needs postvakt installed for this python3, and `wrk` (Debian package) as the
load generator. Where wrk is missing (or with `--client python`), a small
keep-alive HTTP/1.1 client in a second Python process (asyncio, uvloop when
installed) does the same: N connections, each sending the next request as
soon as the last answer is read, every latency recorded. It is slower than
wrk and shares the machine's cores with the server, so its figures are on the
pessimistic side. Results are printed and written as JSON to
bench/results/web-help-<UTC time>.json. Not a test: nothing here is asserted
in tests/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

try:
    import uvloop
except ImportError:  # the server runs on asyncio then too
    uvloop = None  # type: ignore[assignment]

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TARGET_MS = 50.0
CONFIG = """\
hostname = "mail.bench.test"
data_dir = "{data}"
log_level = "warning"

[listen]
smtp = ["127.0.0.1:0"]
submission = ["127.0.0.1:0"]
submissions = ["127.0.0.1:0"]
pop3 = ["127.0.0.1:0"]
pop3s = ["127.0.0.1:0"]

[domains]
local = ["bench.test"]

[web]
listen = "127.0.0.1:0"

[server]
drop_privileges = false   # run as started, in this temporary directory
"""
_UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0}
ACCEPT_LANGUAGE = "sv-SE,sv;q=0.9,en;q=0.8"


def to_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNIT[m.group(2)]


def parse_wrk(out: str) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.M)
        if m:
            res[f"p{pct}_ms"] = round(to_ms(m.group(1)), 2)
    m = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", out)
    if m:
        res["mean_ms"], res["max_ms"] = round(to_ms(m.group(1)), 2), round(to_ms(m.group(3)), 2)
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["requests_per_s"] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in", out)
    res["requests"] = int(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", out)
    res["socket_errors"] = m.group(1).strip() if m else ""
    return res


async def _one_connection(
    host: str, port: int, request: bytes, until: float, out: dict[str, Any]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.monotonic() < until:
            t = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if length is None:
                raise RuntimeError(f"no Content-Length in {head[:200]!r}")
            await reader.readexactly(int(length.group(1)))
            out["latencies"].append((time.perf_counter() - t) * 1000.0)
            status = int(head.split(b" ", 2)[1])
            if not 200 <= status < 400:
                out["non_2xx"] += 1
    except (OSError, asyncio.IncompleteReadError, RuntimeError) as e:
        out["errors"].append(str(e)[:200])
    finally:
        writer.close()


async def _python_load(url: str, connections: int, seconds: float) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (
        f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Accept-Language: {ACCEPT_LANGUAGE}\r\n\r\n"
    ).encode()
    out: dict[str, Any] = {"latencies": [], "non_2xx": 0, "errors": []}
    start_at = time.monotonic()
    until = start_at + seconds
    await asyncio.gather(
        *(_one_connection(host, port, request, until, out) for _ in range(connections))
    )
    out["elapsed"] = time.monotonic() - start_at
    return out


def python_load(url: str, connections: int, seconds: float) -> dict[str, Any]:
    """wrk's figures from the Python client (run in this process: call it in a child)."""
    if uvloop is not None:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    raw = asyncio.run(_python_load(url, connections, seconds))
    lat: list[float] = sorted(raw["latencies"])
    if not lat:
        raise SystemExit(f"no request was answered: {raw['errors'][:3]}")

    def pct(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(len(lat) * p / 100))], 2)

    return {
        "p50_ms": pct(50),
        "p75_ms": pct(75),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "mean_ms": round(sum(lat) / len(lat), 2),
        "max_ms": round(lat[-1], 2),
        "requests": len(lat),
        "requests_per_s": round(len(lat) / raw["elapsed"], 1),
        "non_2xx": raw["non_2xx"],
        "socket_errors": "; ".join(raw["errors"][:3]),
    }


def run_python_client(url: str, connections: int, seconds: int) -> tuple[str, dict[str, Any]]:
    """The Python client in a second process, so that it has a core of its own to compete for."""
    child = subprocess.run(
        [sys.executable, __file__, "--load-only", url, f"--connections={connections}"]
        + [f"--seconds={seconds}"],
        capture_output=True,
        text=True,
        check=True,
    )
    res: dict[str, Any] = json.loads(child.stdout)
    text = (
        f"python client: {res['requests']} requests in {seconds} s, "
        f"{res['requests_per_s']} requests/s\n"
        f"latency ms: p50 {res['p50_ms']}  p75 {res['p75_ms']}  p90 {res['p90_ms']}  "
        f"p99 {res['p99_ms']}  max {res['max_ms']}\n"
    )
    return text, res


def start(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    data = tmp / "data"
    cfg = tmp / "postvakt.toml"
    cfg.write_text(CONFIG.format(data=data))
    log = open(tmp / "server.log", "wb")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "postvakt", "serve", "--config", str(cfg)], stdout=log, stderr=log
    )
    ready = data / "listening.json"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"postvakt serve exited: {(tmp / 'server.log').read_text()}")
        if ready.exists():
            try:
                web = json.loads(ready.read_text())["web"][0]
                return proc, int(web.rsplit(":", 1)[1])
            except (ValueError, KeyError):
                pass
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("postvakt serve did not start")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--connections", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--path", default="/help")
    ap.add_argument(
        "--client",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator (auto: wrk when installed, else the Python client)",
    )
    ap.add_argument("--load-only", metavar="URL", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.load_only:  # the child process of the Python client
        print(json.dumps(python_load(args.load_only, args.connections, args.seconds)))
        return 0
    wrk = shutil.which("wrk")
    client = args.client if args.client != "auto" else ("wrk" if wrk else "python")
    if client == "wrk" and wrk is None:
        print("bench/web_help.py --client wrk needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="postvakt-webbench-") as d:
        proc, port = start(Path(d))
        try:
            url = f"http://127.0.0.1:{port}{args.path}"
            if wrk is not None and client == "wrk":
                subprocess.run(
                    [wrk, "-t1", "-c4", "-d2s", url], capture_output=True, check=True
                )  # warm-up
                out = subprocess.run(
                    [
                        wrk,
                        f"-t{args.threads}",
                        f"-c{args.connections}",
                        f"-d{args.seconds}s",
                        "--latency",
                        "-H",
                        f"Accept-Language: {ACCEPT_LANGUAGE}",
                        url,
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                res = parse_wrk(out)
            else:
                run_python_client(url, 4, 2)  # warm-up
                out, res = run_python_client(url, args.connections, args.seconds)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    res.update(
        client=client,
        connections=args.connections,
        seconds=args.seconds,
        path=args.path,
        target_ms=TARGET_MS,
        met=bool(
            res.get("p99_ms") is not None and res["p99_ms"] < TARGET_MS and not res["non_2xx"]
        ),
        machine={
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load": os.getloadavg(),
        },
    )
    print(out)
    print(
        f"GET {args.path} at {args.connections} connections: p50 {res.get('p50_ms')} ms, "
        f"p99 {res.get('p99_ms')} ms, {res['requests_per_s']} req/s, non-2xx {res['non_2xx']}; "
        f"target p99 < {TARGET_MS} ms: {'met' if res['met'] else 'NOT met'}"
    )
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (RESULTS / f"web-help-{stamp}.json").write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
