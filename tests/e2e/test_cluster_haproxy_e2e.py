"""Two nodes behind a real HAProxy, sharing one Redis and one PostgreSQL directory.

HAProxy (Debian's package) listens on 127.0.0.10 and speaks `send-proxy-v2` to
two `postvakt serve` nodes, node-a on 127.0.0.11 and node-b on 127.0.0.12, each
with its own data_dir and queue. Both keep their state in one private
redis-server (`[store] state`) and their users in one PostgreSQL database of
this module's own (`[store] directory`). Clients bind to 127.0.0.2-9.

HAProxy has one frontend per node and protocol (a POP3 login lands on node A,
the SMTP session that follows on node B: no balancing luck involved) and one
SMTP frontend that spreads over both nodes by round robin.
"""

from __future__ import annotations

import contextlib
import json
import smtplib
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from engines import PrivateRedis, shared_pg_database

from haproxy import requires_haproxy, running_haproxy, tcp_head
from support import (
    LOCAL_DOMAIN,
    RawClient,
    Running,
    SmtpSink,
    base_config,
    eventually,
    free_port,
    pop3_pass_on,
    postvakt,
    rcpt_on,
    to_toml,
)

PROXY_IP = "127.0.0.10"
NODE_IPS = {"node-a": "127.0.0.11", "node-b": "127.0.0.12"}
USER = f"alice@{LOCAL_DOMAIN}"
PASSWORD = "cluster-secret-1"
REMOTE = "far.example"
# Clients: .3 and .4 are outsiders (relay only by a grant), .6-.9 are in networks.
GRANTED = "127.0.0.3"
OTHER = "127.0.0.4"
LOAD_CLIENTS = ["127.0.0.6", "127.0.0.7", "127.0.0.8", "127.0.0.9"]
DENIED = f"550 5.7.1 <carol@{REMOTE}>: Relaying denied"

pytestmark = requires_haproxy


@dataclass
class Cluster:
    nodes: dict[str, Running]
    frontends: dict[str, int]  # HAProxy frontend name -> port on PROXY_IP
    sink_ports: dict[str, int]  # each node's next hop for REMOTE
    root: Path
    sinks: list[SmtpSink] = field(default_factory=list)


def _node_config(root: Path, name: str, store: dict[str, str], sink_port: int) -> Running:
    ip = NODE_IPS[name]
    data_dir = root / name / "data"
    cfg = base_config(
        data_dir,
        server={"node": name},
        store=store,
        listen={
            # Fixed ports: a node restarted after SIGKILL is where HAProxy expects it.
            "smtp": [f"{ip}:{free_port(ip)}"],
            "pop3": [f"{ip}:{free_port(ip)}"],
            "submission": [],
            "submissions": [],
            "pop3s": [],
            "proxy_protocol": ["smtp", "pop3"],
            "proxy_trusted": [f"{PROXY_IP}/32"],
        },
        relay={
            "networks": ["127.0.0.6/31", "127.0.0.8/31"],
            "pop_before_smtp": "30m",
        },
        pop3={"plaintext": "always"},
        delivery={"routes": {REMOTE: f"127.0.0.1:{sink_port}"}},
    )
    cfg_path = root / name / "postvakt.toml"
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(to_toml(cfg))
    return Running(cfg_path, data_dir)


def _haproxy_config(nodes: dict[str, Running], ports: dict[str, int]) -> str:
    def frontend(name: str, servers: list[tuple[str, str]]) -> str:
        lines = [
            f"frontend f_{name}",
            f"    bind {PROXY_IP}:{ports[name]}",
            f"    default_backend b_{name}",
            "",
            f"backend b_{name}",
            "    balance roundrobin",
            f"    source {PROXY_IP}",
        ]
        for node, kind in servers:
            srv = nodes[node]
            lines.append(f"    server {node} {NODE_IPS[node]}:{srv.port(kind)} send-proxy-v2")
        return "\n".join(lines) + "\n\n"

    return (
        tcp_head("retries 2", "option redispatch")
        + frontend("pop3_a", [("node-a", "pop3")])
        + frontend("smtp_a", [("node-a", "smtp")])
        + frontend("smtp_b", [("node-b", "smtp")])
        + frontend("smtp_rr", [("node-a", "smtp"), ("node-b", "smtp")])
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("cluster")
    with contextlib.ExitStack() as stack:
        redis = PrivateRedis(root / "redis").start()
        stack.callback(redis.stop)
        url = stack.enter_context(shared_pg_database("pvcluster"))
        migrate = root / "migrate.toml"
        migrate.write_text(f'data_dir = "{root}/m"\n[store]\ndirectory = "{url}"\n')
        postvakt("store", "migrate", config=migrate)
        store = {"state": redis.url, "directory": url, "timeout": "2s"}
        sink_ports = {name: free_port() for name in NODE_IPS}
        nodes = {name: _node_config(root, name, store, sink_ports[name]) for name in NODE_IPS}
        # One directory: the user added with node A's CLI is node B's user too.
        nodes["node-a"].add_user(USER, PASSWORD)
        for srv in nodes.values():
            stack.callback(srv.start().stop)
        sinks: list[SmtpSink] = []
        stack.callback(lambda: [sink.stop() for sink in sinks])
        ports = {k: free_port(PROXY_IP) for k in ("pop3_a", "smtp_a", "smtp_b", "smtp_rr")}
        cfg = root / "haproxy.cfg"
        cfg.write_text(_haproxy_config(nodes, ports))
        stack.enter_context(running_haproxy(cfg, PROXY_IP, ports.values()))
        yield Cluster(nodes, ports, sink_ports, root, sinks)


def via_proxy(port: int, source: str) -> RawClient:
    """A raw client of one HAProxy frontend, from a given source address."""
    return RawClient(port, source_ip=source, timeout=30, host=PROXY_IP)


def _rcpt_foreign(port: int, source: str) -> str:
    return rcpt_on(via_proxy(port, source), f"bob@{REMOTE}", f"carol@{REMOTE}")


def _pop3_login(port: int, source: str) -> str:
    return pop3_pass_on(via_proxy(port, source), USER, PASSWORD)


def test_pop3_login_on_node_a_through_haproxy_opens_relay_on_node_b(cluster: Cluster) -> None:
    fe = cluster.frontends
    # Before the login node B refuses the address: only the grant can open it.
    assert _rcpt_foreign(fe["smtp_b"], GRANTED).startswith(DENIED)
    reply = _pop3_login(fe["pop3_a"], GRANTED)
    assert reply.startswith("+OK"), reply
    # The grant was made on node A (the POP3 frontend reaches only node A) ...
    eventually(lambda: _assert_relays(fe["smtp_b"], GRANTED), timeout=20)
    # ... and it names the client of the PROXY header, nobody else.
    assert _rcpt_foreign(fe["smtp_b"], OTHER).startswith(DENIED)
    assert _rcpt_foreign(fe["smtp_a"], OTHER).startswith(DENIED)
    for name, node in cluster.nodes.items():
        listed = json.loads(node.cli("grants", "list", "--json").stdout)
        mine = [(g["ip"], g["login"], g["protocol"], g["node"]) for g in listed]
        assert mine == [(GRANTED, USER, "pop3", "node-a")], (name, listed)
        text = node.cli(
            "explain", "--client", GRANTED, "--from", f"bob@{REMOTE}", "--to", f"carol@{REMOTE}"
        ).stdout
        assert f"POP3 login by {USER} from {GRANTED} on node node-a" in text, (name, text)
        # explain exits 1 for a refusal.
        other = node.cli(
            "explain",
            "--client",
            OTHER,
            "--from",
            f"bob@{REMOTE}",
            "--to",
            f"carol@{REMOTE}",
            check=False,
        )
        assert other.returncode == 1, (name, other.stdout, other.stderr)
        assert "Relaying denied" in other.stdout, (name, other.stdout)
        assert "POP3 login by" not in other.stdout, (name, other.stdout)
        # explain reads the users from the shared PostgreSQL directory too.
        local = node.cli("explain", "--client", OTHER, "--from", f"bob@{REMOTE}", "--to", USER)
        assert "no user database" not in local.stdout, (name, local.stdout)
        assert "result: accepted" in local.stdout, (name, local.stdout)


def _assert_relays(port: int, source: str) -> None:
    reply = _rcpt_foreign(port, source)
    assert reply.startswith("250"), reply


@dataclass
class Load:
    """SMTP clients sending through the round-robin frontend until told to stop."""

    port: int
    accepted: list[str] = field(default_factory=list)  # tokens that got a 250 after DATA
    failed: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, source: str) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            token = f"load-{source}-{n}-{uuid.uuid4().hex[:8]}"
            try:
                with smtplib.SMTP(PROXY_IP, self.port, source_address=(source, 0), timeout=30) as s:
                    s.ehlo("load.example")
                    s.sendmail(
                        f"bob@{REMOTE}",
                        [f"carol@{REMOTE}"],
                        f"Subject: {token}\r\nMessage-ID: <{token}@load.example>\r\n\r\n"
                        f"{token}\r\n",
                    )
            except (OSError, smtplib.SMTPException) as e:
                with self.lock:
                    self.failed[type(e).__name__] += 1
                continue
            with self.lock:
                self.accepted.append(token)


def _queued(node: Running) -> int:
    return node.log().count("queued id=")


def _wait(cond: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what}: not seen in {timeout} s"
        time.sleep(0.1)


def test_sigkill_of_node_a_under_load_loses_no_accepted_message(cluster: Cluster) -> None:
    a = cluster.nodes["node-a"]
    try:
        _sigkill_round(cluster)
    finally:
        if a.proc is None or a.proc.poll() is not None:
            a.start()  # the other tests of the module need both nodes


def _sigkill_round(cluster: Cluster) -> None:
    a, b = cluster.nodes["node-a"], cluster.nodes["node-b"]
    # Node B's next hop is up; node A's is down until A has been killed and
    # restarted, so every message A accepted is still in A's queue when it dies.
    sink_b = SmtpSink(cluster.root, port=cluster.sink_ports["node-b"])
    cluster.sinks.append(sink_b)
    load = Load(cluster.frontends["smtp_rr"])
    threads = [threading.Thread(target=load.run, args=(ip,), daemon=True) for ip in LOAD_CLIENTS]
    a_before, b_before = _queued(a), _queued(b)
    try:
        for t in threads:
            t.start()
        _wait(lambda: _queued(a) - a_before >= 8 and _queued(b) - b_before >= 8, "load on both")
        a.kill()
        b_at_kill = _queued(b)
        # HAProxy keeps spreading: B takes the load that A cannot.
        _wait(lambda: _queued(b) - b_at_kill >= 8, "load on node B alone")
    finally:
        load.stop.set()
        for t in threads:
            t.join(60)
    a_accepted = _queued(a) - a_before
    accepted = list(load.accepted)
    assert accepted and a_accepted >= 8
    sink_a = SmtpSink(cluster.root, port=cluster.sink_ports["node-a"])
    cluster.sinks.append(sink_a)
    a.start()

    def from_a() -> int:
        return sum(1 for text in sink_a.messages() if "Subject: load-" in text)

    def delivered() -> Counter[str]:
        seen: Counter[str] = Counter()
        for sink in (sink_a, sink_b):
            for text in sink.messages():
                for line in text.splitlines():
                    if line.startswith("Subject: load-"):
                        seen[line.split(": ", 1)[1].strip()] += 1
        return seen

    def all_there() -> bool:
        seen = delivered()
        return all(t in seen for t in accepted) and from_a() >= a_accepted

    deadline = time.monotonic() + 90
    while not all_there() and time.monotonic() < deadline:
        time.sleep(0.2)
    seen = delivered()
    lost = [t for t in accepted if t not in seen]
    duplicates = {t: n for t, n in seen.items() if n > 1}
    summary = (
        f"accepted={len(accepted)} delivered={len(seen)} lost={len(lost)} "
        f"duplicates={duplicates} queued on node-a={a_accepted} "
        f"delivered by node-a after its restart={from_a()} client failures={dict(load.failed)}"
    )
    print(summary)
    assert not lost, f"{len(lost)} accepted messages lost: {lost[:5]}; {summary}"
    # Everything node A had queued when it was killed left its queue after the restart.
    assert from_a() >= a_accepted, summary
