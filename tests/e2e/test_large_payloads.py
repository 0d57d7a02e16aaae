"""Large bodies stream to disk, not memory (issue 14): a 256 MiB task message and a 256 MiB model go through a
real local platform process whose peak memory hardly moves, come back with the same sha256, and the model
is a file named by its sha256 beside the database, not a database column. An upload cut off half way
leaves nothing behind and the platform goes on; a body over a bound is refused with 413 or 429."""
import hashlib
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from conftest import quiet_env, start_local_platform
from werkbund.client.transports.http import HttpTransport
from werkbund.platform.errors import InboxFull, InvalidInput, PayloadTooLarge
from werkbund.platform.storage.mailboxes import DiskMailboxes
from werkbund.platform.service import PlatformService

MiB = 1 << 20
BIG = 256 * MiB
PASSWORD = "a-long-password"


class Generated:
    """``size`` bytes made piece by piece (a random MiB, each piece stamped with its number), hashed as they
    go out: nothing of the size of the whole is ever held."""

    def __init__(self, size: int):
        self.size, self.sha256 = size, hashlib.sha256()
        self.block = os.urandom(MiB)

    def __iter__(self):
        sent = 0
        for number in range(-(-self.size // MiB)):
            piece = (number.to_bytes(8, "big") + self.block[8:])[:self.size - sent]
            self.sha256.update(piece)
            sent += len(piece)
            yield piece

    def to_file(self, path: Path) -> Path:
        with open(path, "wb") as out:
            for piece in self:
                out.write(piece)
        return path


def memory(pid: int, field: str = "VmHWM") -> int:
    """The process's peak (VmHWM) or present (VmRSS) resident memory, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc")


def reset_peak(pid: int) -> int:
    """Start the process's peak memory afresh (Linux: 5 into clear_refs); its resident memory now."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return memory(pid, "VmRSS")


def download_sha256(response: requests.Response) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    for piece in response.iter_content(MiB):
        digest.update(piece)
        size += len(piece)
    return digest.hexdigest(), size


def federation(url: str, task: str = "big") -> tuple[HttpTransport, HttpTransport]:
    """alice created ``task`` and started it with bob in it; their logged-in transports."""
    users = {}
    for name in ("alice", "bob"):
        users[name] = HttpTransport(url)
        users[name].register(name, PASSWORD, f"{name} gmbh")
        users[name].login(name, PASSWORD)
    alice, bob = users["alice"], users["bob"]
    alice.call("create_task", task=task, definition={"algorithm": "kmeans", "quorum": 1, "rounds": 1})
    bob.call("join_task", task=task)
    alice.call("start_task", task=task)
    return alice, bob


def authorized(transport: HttpTransport) -> dict:
    return {"Authorization": f"Bearer {transport.token}"}


def cut_off_upload(url: str, method: str, path: str, headers: dict, announced: int, sent: int) -> None:
    """Announce ``announced`` bytes, send ``sent`` of them, and hang up."""
    where = urlsplit(url)
    lines = [f"{method} /api/v1{path} HTTP/1.1", f"Host: {where.netloc}", f"Content-Length: {announced}",
             *(f"{key}: {value}" for key, value in headers.items())]
    with socket.create_connection((where.hostname, where.port)) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        for _ in range(sent // MiB):
            sock.sendall(b"\x01" * MiB)


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.mark.slow
def test_a_256_mib_message_and_model_pass_a_platform_process_with_bounded_memory(tmp_path):
    db = tmp_path / "platform.sqlite"
    proc, url = start_local_platform(tmp_path, f"sqlite:///{db}")
    try:
        alice, bob = federation(url)
        before = reset_peak(proc.pid)  # after the logins (argon2 takes 64 MiB for a moment) and first requests

        # a message to the aggregator, sent from a generator (chunked), received as a stream
        message = Generated(BIG)
        sent = requests.post(f"{url}/api/v1/tasks/big/messages", params={"to": "aggregator"}, data=iter(message),
                             headers={**authorized(bob), "X-Werkbund-Message-Id": "big-1"}, timeout=600)
        assert sent.status_code == 202, sent.text
        assert sent.json()["data"] == {"delivered_to": 1, "size": BIG, "sha256": message.sha256.hexdigest()}
        with requests.get(f"{url}/api/v1/tasks/big/messages", params={"timeout": "5"}, headers=authorized(alice),
                          stream=True, timeout=600) as got:
            assert got.status_code == 200 and got.headers["X-Werkbund-Sender"] == "bob"
            assert download_sha256(got) == (message.sha256.hexdigest(), BIG)

        # the final model, uploaded from a file by the client and downloaded into one
        model = Generated(BIG)
        source = model.to_file(tmp_path / "model.bin")
        stored = alice.put_model("big", source, {"format": "raw"})
        assert stored == {"task": "big", "sha256": model.sha256.hexdigest(), "size": BIG}
        alice.call("finish_task", task="big")
        source.unlink()
        info = bob.download_model("big", tmp_path / "downloaded.bin")
        assert info["sha256"] == model.sha256.hexdigest() and info["meta"] == {"format": "raw"}
        with open(tmp_path / "downloaded.bin", "rb") as fh:
            assert hashlib.file_digest(fh, "sha256").hexdigest() == model.sha256.hexdigest()

        grown = memory(proc.pid) - before
        print(f"\npeak RSS of the platform process grew by {grown / MiB:.1f} MiB moving 2 x 256 MiB in and out")
        assert grown < 64 * MiB
    finally:
        proc.terminate()
        proc.wait(timeout=20)

    # the model is a file named by its sha256 beside the database; its row holds no bytes
    assert [p.name for p in files_under(Path(f"{db}.models"))] == [model.sha256.hexdigest()]
    assert (Path(f"{db}.models") / model.sha256.hexdigest()).stat().st_size == BIG
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT sha256, size, data IS NULL FROM stored_models").fetchall() == [
            (model.sha256.hexdigest(), BIG, 1)]
    assert files_under(Path(f"{db}.mailboxes")) == []  # the message's file went once alice had it


@pytest.mark.slow
def test_an_upload_cut_off_half_way_leaves_no_partial_message_or_model_and_the_platform_goes_on(tmp_path):
    db = tmp_path / "platform.sqlite"
    proc, url = start_local_platform(tmp_path, f"sqlite:///{db}")
    try:
        alice, bob = federation(url)
        cut_off_upload(url, "POST", "/tasks/big/messages?to=aggregator", {**authorized(bob),
                       "X-Werkbund-Message-Id": "cut-1"}, announced=64 * MiB, sent=16 * MiB)
        cut_off_upload(url, "PUT", "/tasks/big/model", authorized(alice), announced=64 * MiB, sent=16 * MiB)

        # the platform goes on: the same message id sent whole now is stored (the cut one never was)
        assert bob.send("big", "aggregator", b"whole")["size"] == 5
        assert alice.receive("big", 5) == ("bob", b"whole")
        assert alice.receive("big", 0) is None
        assert alice.put_model("big", b"a small model", {})["size"] == 13
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert files_under(Path(f"{db}.mailboxes")) == []
    assert [p.name for p in files_under(Path(f"{db}.models"))] == [hashlib.sha256(b"a small model").hexdigest()]


SERVE = """
import sys
from werkbund.local_platform.server import LocalPlatformServer
db, message, model, pending = sys.argv[1], *map(int, sys.argv[2:])
server = LocalPlatformServer(db, max_message_bytes=message, max_model_bytes=model, max_pending_bytes=pending)
print("listening on", server.url, flush=True)
server.serve_forever()
"""


@pytest.mark.slow
def test_a_body_over_a_bound_is_refused_with_413_or_429_and_nothing_is_kept(tmp_path):
    db = tmp_path / "platform.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", SERVE, f"sqlite:///{db}", str(8 * MiB), str(16 * MiB),
                             str(20 * MiB)], env=quiet_env(WERKBUND_HOME=str(tmp_path / "home")),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, stdin=subprocess.DEVNULL)
    try:
        url = proc.stdout.readline().split("listening on ")[1].strip()
        alice, bob = federation(url)
        with pytest.raises(PayloadTooLarge, match="at most 8388608 bytes"):
            bob.send("big", "aggregator", b"\x02" * (8 * MiB + 1))
        bob.send("big", "aggregator", b"\x03" * (8 * MiB))
        bob.send("big", "aggregator", b"\x04" * (8 * MiB))
        with pytest.raises(InboxFull, match="send again once it has read them"):  # 24 MiB > bob's 20 MiB share
            bob.send("big", "aggregator", b"\x05" * (8 * MiB))
        with pytest.raises(PayloadTooLarge, match="at most 16777216 bytes"):
            alice.put_model("big", b"\x06" * (16 * MiB + 1), {})

        # far over every bound: the HTTP server refuses at the headers, before a byte of the body is read
        where = urlsplit(url)
        with socket.create_connection((where.hostname, where.port)) as sock:
            sock.sendall((f"PUT /api/v1/tasks/big/model HTTP/1.1\r\nHost: {where.netloc}\r\n"
                          f"Content-Length: {64 * 1024**3}\r\n\r\n").encode())
            assert sock.recv(4096).startswith(b"HTTP/1.1 413 ")

        assert [alice.receive("big", 5)[1][:1] for _ in range(2)] == [b"\x03", b"\x04"]
        assert alice.receive("big", 0) is None
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert files_under(Path(f"{db}.mailboxes")) == [] and files_under(Path(f"{db}.models")) == []


class Breaks:
    """A request body whose client hangs up after ``after`` bytes (as werkzeug's stream then raises)."""

    def __init__(self, after: int):
        self.left = after

    def read(self, size: int) -> bytes:
        if self.left <= 0:
            raise ConnectionResetError("the client went away")
        piece = b"\x07" * min(size, self.left)
        self.left -= len(piece)
        return piece


def test_a_broken_or_short_stream_leaves_no_message_file_and_frees_the_senders_share(tmp_path):
    boxes = DiskMailboxes(tmp_path / "boxes", max_pending_bytes=4 * MiB)
    with pytest.raises(ConnectionResetError):
        boxes.put_stream("t", ["@aggregator", "bob"], "alice", Breaks(3 * MiB), 4 * MiB, message_id="m-1")
    with pytest.raises(InvalidInput, match="ended after 1048576 of its 4194304 bytes"):
        boxes.put_stream("t", ["@aggregator"], "alice", EndsEarly(MiB), 4 * MiB, message_id="m-1")
    assert files_under(tmp_path / "boxes") == []
    assert boxes.put_stream("t", ["@aggregator"], "alice", Breaks(4 * MiB), 4 * MiB, message_id="m-1") == (
        True, hashlib.sha256(b"\x07" * 4 * MiB).hexdigest())  # the whole share is free, the id not taken
    message = DiskMailboxes(tmp_path / "boxes").get("t", "@aggregator", 0)  # as after a restart
    assert (message.sender, message.size, message.body[:1]) == ("alice", 4 * MiB, b"\x07")


class EndsEarly(Breaks):
    """A body that simply ends early (``read`` returns nothing)."""

    def read(self, size: int) -> bytes:
        return b"" if self.left <= 0 else super().read(size)


def test_a_model_is_stored_as_a_file_named_by_its_sha256_and_a_broken_upload_stores_nothing(tmp_path):
    core = PlatformService(f"sqlite:///{tmp_path / 'p.sqlite'}")
    for name in ("alice", "bob"):
        core.register(name, PASSWORD, "org")
    core.create_task("alice", "t", {"algorithm": "kmeans", "quorum": 1, "rounds": 1})
    core.join_task("bob", "t")
    core.start_task("alice", "t")
    models = tmp_path / "p.sqlite.models"
    with pytest.raises(ConnectionResetError):
        core.put_model_stream("alice", "t", Breaks(2 * MiB), {}, size=3 * MiB)
    with pytest.raises(InvalidInput, match="ended after"):
        core.put_model_stream("alice", "t", EndsEarly(MiB), {}, size=3 * MiB)
    assert files_under(models) == []
    first = core.put_model("alice", "t", b"first model", {})
    second = core.put_model_stream("alice", "t", EndsEarly(3 * MiB), {"v": 2})  # no size: to its end
    assert [p.name for p in files_under(models)] == [second["sha256"]]  # the replaced one is gone
    assert first["sha256"] != second["sha256"] and second["size"] == 3 * MiB
    core.finish_task("alice", "t")
    handle, info = core.open_model("bob", "t")
    with handle:
        assert hashlib.file_digest(handle, "sha256").hexdigest() == info["sha256"] == second["sha256"]
    core.delete_task("alice", "t")
    assert files_under(models) == []
    core.db.dispose()
