"""A RabbitMQ cluster of the test's own: three nodes (tests/support/broker_node.py) joined into one
cluster, behind HAProxy, as docs/operations.md ("Quorum queues on a broker cluster") tells an operator
to run one.

HAProxy is the one address the platform and the clients are given, for AMQP and for the management
API. It sends every new connection to the first node that is up (``balance first``), so the
platform, the aggregator and the participants are all on node 1, and the platform declares its
queues there: with the broker's default leader locator (client-local), node 1 leads every quorum
queue and nodes 2 and 3 follow. Stopping node 1 is then the whole failover: every connection is cut,
every queue elects a leader on another node, and every client reconnects through HAProxy, which
finds node 1 down by its health check (or by a refused connection, with ``option redispatch``).
"""
from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import requests

from support.broker_node import BrokerNode, free_port, management_get, queue_path
from support.cloud_support import unavailable


class BrokerCluster:
    """Three clustered nodes and HAProxy in front; ``port`` and ``management_url`` are HAProxy's (the
    attributes tests/support/cloud_support.py takes from a node)."""

    def __init__(self, base: Path, size: int = 3):
        self.base = base
        self.nodes = [BrokerNode(base / f"node{i + 1}") for i in range(size)]
        cookie = secrets.token_hex(16).upper()  # one Erlang cookie: nodes that share it may cluster
        for node in self.nodes:
            path = node.base / "home" / ".erlang.cookie"
            path.write_text(cookie)
            path.chmod(0o400)
        self.port, self.management_port = free_port(), free_port()
        self.management_url = f"http://guest:guest@127.0.0.1:{self.management_port}"
        self.proxy: subprocess.Popen | None = None

    def start(self) -> None:
        if not shutil.which("haproxy"):
            unavailable("HAProxy is not installed (`apt-get install haproxy`, as .ci/run does)")
        first, *others = self.nodes
        for node in self.nodes:
            node.start()
        for node in others:
            for args in (("stop_app",), ("join_cluster", first.node), ("start_app",)):
                done = node.ctl(*args)
                assert done.returncode == 0, f"{node.node} {' '.join(args)}: {done.stdout} {done.stderr}"
        members = self.running_nodes()
        assert members == sorted(node.node for node in self.nodes), members
        self._start_proxy()

    def running_nodes(self) -> list[str]:
        return sorted(item["name"] for item in management_get(self.nodes[0].management_port, "nodes")
                      if item.get("running"))

    def _start_proxy(self) -> None:
        def servers(attribute: str) -> str:
            return "\n".join(f"  server node{i + 1} 127.0.0.1:{getattr(node, attribute)} check inter 500 fall 2 rise 2"
                             for i, node in enumerate(self.nodes))

        config = self.base / "haproxy.cfg"
        config.write_text(
            "global\n  maxconn 2000\n"
            "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 1h\n  timeout server 1h\n"
            "  retries 3\n  option redispatch\n"
            f"frontend amqp\n  bind 127.0.0.1:{self.port}\n  default_backend amqp_nodes\n"
            f"backend amqp_nodes\n  balance first\n{servers('port')}\n"
            f"frontend management\n  bind 127.0.0.1:{self.management_port}\n  default_backend management_nodes\n"
            f"backend management_nodes\n  balance first\n{servers('management_port')}\n")
        check = subprocess.run(["haproxy", "-c", "-f", str(config)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        self.proxy = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdin=subprocess.DEVNULL,
                                      stdout=open(self.base / "haproxy.log", "w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"http://127.0.0.1:{self.management_port}/api/overview", auth=("guest", "guest"),
                                timeout=5).ok:
                    return
            assert self.proxy.poll() is None, (self.base / "haproxy.log").read_text()
            time.sleep(0.2)
        raise AssertionError(f"HAProxy did not answer: {(self.base / 'haproxy.log').read_text()}")

    def queue(self, vhost: str, name: str) -> dict:
        """The management API's record of a queue (through HAProxy: any node that is up)."""
        return management_get(self.management_port, queue_path(vhost, name))

    def connections(self) -> list[dict]:
        return management_get(self.management_port, "connections")

    def close(self) -> None:
        if self.proxy is not None and self.proxy.poll() is None:
            self.proxy.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proxy.wait(timeout=10)
            if self.proxy.poll() is None:
                self.proxy.kill()
        for node in reversed(self.nodes):
            node.kill()


@contextlib.contextmanager
def broker_cluster(base: Path):
    cluster = BrokerCluster(base)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
