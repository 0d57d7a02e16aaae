"""A RabbitMQ node of the test's own: its own ports, data and logs in a temporary folder.

The durability test stops and starts this node in the middle of a task; the system broker on
5672 (that the other tests use) is left alone. The node runs as the current user with HOME in the
temporary folder, so rabbitmqctl finds the same Erlang cookie as the node (the /usr/sbin wrappers
switch to the rabbitmq user, whose cookie the node would not have: the cause of an earlier attempt
hanging in `await_startup` until it timed out). The node is told to ignore the system's
rabbitmq-env.conf, which pins NODENAME and the listener of the system broker, and the system's
/etc/rabbitmq/conf.d (scripts/provision.sh puts the system broker's TLS listener there: a test
node that read it would fail to listen on the same port).
"""
from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from support.cloud_support import unavailable

SCRIPTS = Path("/usr/lib/rabbitmq/bin")


def _script(name: str) -> str | None:
    if (SCRIPTS / name).exists():
        return str(SCRIPTS / name)
    return shutil.which(name)


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A free port below the kernel's ephemeral range. A port the kernel hands out (bind to 0) is
    ephemeral: while the node is down, any outgoing connection of the suite may take it as its own
    local port, and the node then fails to listen on restart (seen: eaddrinuse)."""
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


class BrokerNode:
    """One RabbitMQ node with the management plugin, started and stopped by the test."""

    def __init__(self, base: Path, name: str = "wbtest"):
        self.base = base
        ports: list[int] = []
        while len(ports) < 3:  # AMQP, management, Erlang distribution: three different ports
            port = free_port()
            if port not in ports:
                ports.append(port)
        self.port, self.management_port, self.dist_port = ports
        self.node = f"{name}{self.port}@localhost"
        self.host = "127.0.0.1"
        self.management_url = f"http://guest:guest@127.0.0.1:{self.management_port}"
        self.process: subprocess.Popen | None = None
        self.started_once = False
        for folder in ("home", "mnesia", "log", "conf.d"):
            (base / folder).mkdir(parents=True, exist_ok=True)
        (base / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {self.management_port}\n"
            "collect_statistics_interval = 500\n")
        (base / "enabled_plugins").write_text("[rabbitmq_management].\n")

    def env(self) -> dict:
        env = dict(os.environ)
        env.update(
            HOME=str(self.base / "home"), RABBITMQ_NODENAME=self.node, RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port), RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.base / "mnesia"), RABBITMQ_LOG_BASE=str(self.base / "log"),
            RABBITMQ_CONFIG_FILE=str(self.base / "rabbitmq.conf"),
            RABBITMQ_CONFIG_FILES=str(self.base / "conf.d"),  # not the system's /etc/rabbitmq/conf.d
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.base / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.base / "enabled_plugins"),
            RABBITMQ_CONF_ENV_FILE=str(self.base / "no-rabbitmq-env.conf"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            ERL_EPMD_ADDRESS="127.0.0.1")
        return env

    def ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([_script("rabbitmqctl"), "-n", self.node, *args], env=self.env(),
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def start(self, timeout: float = 120, attempts: int = 2) -> None:
        server = _script("rabbitmq-server")
        if not server or not _script("rabbitmqctl"):
            unavailable("RabbitMQ (rabbitmq-server, rabbitmqctl) is not installed")
        for attempt in range(attempts):  # a restart right after a stop can lose a race for its ports
            waited = self._start_once(server, timeout)
            if waited.returncode == 0 and self._management_up(timeout=60):
                self.started_once = True
                return
            self.kill()
            time.sleep(3)
        # a node that ran before is installed and working: failing to bring it back is a failure, not a skip
        give_up = pytest.fail if self.started_once else unavailable
        give_up(f"the test's own RabbitMQ node did not start ({attempts} attempts): {waited.stdout[-500:]} "
                    f"{waited.stderr[-500:]} log: {self.log_tail()}")

    def _start_once(self, server: str, timeout: float) -> subprocess.CompletedProcess:
        self.process = subprocess.Popen([server], env=self.env(), stdin=subprocess.DEVNULL,
                                        stdout=open(self.base / "server.out", "a"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:  # await_startup fails at once while the node is not yet known to epmd
            waited = self.ctl("await_startup", "--timeout", str(int(timeout)), timeout=timeout + 30)
            if waited.returncode == 0 or time.monotonic() > deadline or self.process.poll() is not None:
                return waited
            time.sleep(1)

    def _management_up(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"http://127.0.0.1:{self.management_port}/api/overview",
                                auth=("guest", "guest"), timeout=5).ok:
                    return True
            time.sleep(0.5)
        return False

    def stop(self) -> None:
        """Stop the whole node (as `rabbitmqctl stop` or a shutdown would); its data stays."""
        self.ctl("stop", timeout=120)
        if self.process is not None:
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
            self.process = None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.ctl("stop", timeout=60)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=30)
            if self.process.poll() is None:
                self.process.kill()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, chars: int = 2000) -> str:
        logs = sorted((self.base / "log").glob("*.log"))
        return "".join(path.read_text(errors="replace")[-chars:] for path in logs)


def queue_path(vhost: str, name: str) -> str:
    return "queues/" + "/".join(requests.utils.quote(part, safe="") for part in (vhost, name))


def management_get(port: int, path: str, missing_ok: bool = False):
    """GET ``/api/<path>`` of the management API on ``port`` as guest; its JSON ({} for an answer that
    is not OK where ``missing_ok``; otherwise such an answer raises)."""
    response = requests.get(f"http://127.0.0.1:{port}/api/{path}", auth=("guest", "guest"), timeout=10)
    if missing_ok and not response.ok:
        return {}
    response.raise_for_status()
    return response.json()


@contextlib.contextmanager
def broker_node(base: Path):
    node = BrokerNode(base)
    node.start()
    try:
        yield node
    finally:
        node.kill()
