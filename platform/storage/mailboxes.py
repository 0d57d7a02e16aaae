"""Inboxes for task messages: in memory (in one process, simulations) or on disk (the local platform).

Who may send to whom is decided by the core (``PlatformService.route_message``);
this only stores opaque message bodies and wakes waiting readers. A broadcast
stores one body object in every inbox (on disk: one file, hard-linked into each),
never a copy per participant.

Every inbox is bounded per sender: one member can have at most ``max_pending`` messages
and ``max_pending_bytes`` bytes waiting in another's inbox (``InboxFull`` beyond, a clear
refusal the sender sees), so a participant that floods the aggregator fills only its own share
of memory and never crowds out the others' updates.

A message body may also come as a stream of known size (``put_stream``: the local platform's HTTP
request body): the on-disk kind copies it in pieces into its file, so a message of any size passes with
bounded memory; the sender's share of the inbox is reserved from the announced size before a byte is read.

A sender may name a message with an id (``message_id``, the HTTP header ``X-Werkbund-Message-Id``):
a message sent again with an id already accepted is not stored twice, so a client that lost the
reply to a send (the platform died meanwhile) can send again safely.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from werkbund.platform.errors import InboxFull, InvalidInput
from werkbund.platform.storage.files import PIECE, stream_to_file

log = logging.getLogger("werkbund.mailboxes")

MAX_PENDING = 256                  # messages one sender may have waiting in one inbox
MAX_PENDING_BYTES = 2 * 1024**3    # bytes one sender may have waiting in one inbox
REMEMBERED_IDS = 100_000           # message ids remembered to drop a repeated send
MESSAGE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _nothing() -> None:
    pass


class Message:
    """A message for its reader: ``body`` (bytes; on disk read when asked) or, on disk, ``path`` and ``size``
    to stream it from; ``done`` is called once it reached the reader."""

    def __init__(self, sender: str, body: bytes | None = None, done: Callable[[], None] = _nothing,
                 path: Path | None = None, size: int | None = None):
        self.sender, self._body, self.done, self.path = sender, body, done, path
        self.size = len(body) if body is not None else (size or 0)

    @property
    def body(self) -> bytes:
        if self._body is None:
            try:
                return self.path.read_bytes() if self.path is not None else b""
            except FileNotFoundError:  # the task was deleted meanwhile
                return b""
        return self._body

    def open(self):
        """A binary file handle on the body (a file on disk, else the bytes); None once the task was deleted."""
        if self.path is None:
            import io

            return io.BytesIO(self.body)
        try:
            return open(self.path, "rb")
        except FileNotFoundError:
            return None

    def __repr__(self) -> str:
        return f"Message(sender={self.sender!r}, size={self.size})"


def check_message_id(message_id: str | None) -> str | None:
    if message_id is not None and not MESSAGE_ID.fullmatch(message_id):
        raise InvalidInput("a message id has 1 to 64 letters, digits, '-' or '_'")
    return message_id or None


class Mailboxes:
    """Inboxes in memory: a message lives as long as this process."""

    def __init__(self, max_pending: int = MAX_PENDING, max_pending_bytes: int = MAX_PENDING_BYTES):
        self._boxes: dict[tuple[str, str], deque] = {}
        self._cond = threading.Condition()
        self.max_pending, self.max_pending_bytes = max_pending, max_pending_bytes
        self._count: Counter = Counter()  # (task, inbox, sender) -> messages waiting
        self._bytes: Counter = Counter()  # (task, inbox, sender) -> bytes waiting
        self._ids: OrderedDict = OrderedDict()  # (task, sender, message id) accepted lately
        self._wakes: dict[tuple[str, str], list[Callable[[], None]]] = {}  # (task, inbox) -> take's wakes

    # ---------------------------------------------------------- storage (the in-memory kind)
    def _store(self, task: str, inboxes: list[str], sender: str, body: bytes, message_id: str | None) -> list:
        """One item per inbox, in the order of ``inboxes``; runs outside the lock."""
        message = Message(sender, body)
        return [message] * len(inboxes)

    def _store_stream(self, task: str, inboxes: list[str], sender: str, stream, size: int,
                      message_id: str | None) -> tuple[list, str]:
        """As ``_store``, reading ``size`` bytes from ``stream``: (items, sha256 of the body)."""
        body = _read_exactly(stream, size)
        return self._store(task, inboxes, sender, body, message_id), hashlib.sha256(body).hexdigest()

    def _unstore(self, task: str, inbox: str, item) -> Message:
        """The message of a stored item (outside the lock); ``done`` forgets it for good."""
        return item

    @staticmethod
    def _sender_of(item) -> str:
        return item.sender

    @staticmethod
    def _size_of(item) -> int:
        return len(item.body)

    def _forget_task(self, task: str) -> None:
        pass

    # ---------------------------------------------------------- the interface
    def put(self, task: str, inboxes: list[str], sender: str, body: bytes, message_id: str | None = None) -> bool:
        """Deliver to every inbox or to none: InboxFull if any of them holds the sender's full share.
        False (and nothing stored) when a message with this ``message_id`` from this sender was accepted before."""
        return self._put(task, inboxes, sender, len(body), message_id,
                         lambda: self._store(task, inboxes, sender, body, message_id))

    def put_stream(self, task: str, inboxes: list[str], sender: str, stream, size: int,
                   message_id: str | None = None) -> tuple[bool, str]:
        """``put`` for a body of ``size`` bytes read from ``stream`` (``read``): (stored, sha256 of the body).
        The share is reserved (InboxFull) before a byte is read; a stream that ends early (InvalidInput)
        leaves nothing behind. A repeat of an accepted message id is read and hashed, not stored."""
        if not isinstance(size, int) or size < 0:
            raise InvalidInput("a message needs its size (Content-Length)")
        digest = []

        def store():
            items, sha = self._store_stream(task, inboxes, sender, stream, size, message_id)
            digest.append(sha)
            return items

        if self._put(task, inboxes, sender, size, message_id, store):
            return True, digest[0]
        return False, _hash_exactly(stream, size)

    def _put(self, task, inboxes, sender, size: int, message_id, store) -> bool:
        check_message_id(message_id)
        known = (task, sender, message_id) if message_id else None
        with self._cond:
            if known is not None and known in self._ids:
                return False
            for inbox in inboxes:
                key = (task, inbox, sender)
                if self._count[key] + 1 > self.max_pending or self._bytes[key] + size > self.max_pending_bytes:
                    raise InboxFull(f"{inbox}'s inbox in task {task!r} already holds {self._count[key]} of your "
                                    f"messages ({self._bytes[key]} bytes; at most {self.max_pending} and "
                                    f"{self.max_pending_bytes} bytes wait per sender); send again once it has read them")
            for inbox in inboxes:  # reserved now, so that two sends at once cannot both take the last place
                self._count[(task, inbox, sender)] += 1
                self._bytes[(task, inbox, sender)] += size
            if known is not None:
                self._remember(known)
        try:
            items = store()
        except BaseException:
            with self._cond:
                for inbox in inboxes:
                    self._release(task, inbox, sender, size)
                if known is not None:
                    self._ids.pop(known, None)
            raise
        with self._cond:
            for inbox, item in zip(inboxes, items):
                self._boxes.setdefault((task, inbox), deque()).append(item)
            self._cond.notify_all()
            wakes = [wake for inbox in inboxes for wake in self._wakes.pop((task, inbox), ())]
        _call_all(wakes)
        return True

    def _remember(self, known: tuple) -> None:
        self._ids[known] = True
        while len(self._ids) > REMEMBERED_IDS:
            self._ids.popitem(last=False)

    def _release(self, task: str, inbox: str, sender: str, size: int) -> None:
        key = (task, inbox, sender)
        self._count[key] -= 1
        self._bytes[key] -= size
        if self._count[key] <= 0:
            del self._count[key], self._bytes[key]

    def _pop(self, task: str, inbox: str):
        """The oldest item of the inbox, its sender's share released; None if it is empty (under the lock)."""
        box = self._boxes.get((task, inbox))
        if not box:
            return None
        item = box.popleft()
        self._release(task, inbox, self._sender_of(item), self._size_of(item))
        return item

    def get(self, task: str, inbox: str, timeout: float) -> Message | None:
        """The oldest message in the inbox, waiting up to ``timeout`` seconds for one (holding this thread)."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while (item := self._pop(task, inbox)) is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
        return self._unstore(task, inbox, item)

    def take(self, task: str, inbox: str, wake: Callable[[], None] | None = None) -> Message | None:
        """The oldest message in the inbox, or None at once. Then ``wake`` (if given) is called once, from the
        sender's thread, when a message arrives in this inbox or the task is dropped: an asynchronous server
        awaits that and asks again, instead of holding a thread in ``get`` per waiting reader. Checking and
        watching are one step under the lock, so a message that comes in between is never missed."""
        with self._cond:
            item = self._pop(task, inbox)
            if item is None:
                if wake is not None:
                    self._wakes.setdefault((task, inbox), []).append(wake)
                return None
        return self._unstore(task, inbox, item)

    def take_more(self, task: str, inbox: str, most: int, room: int) -> list[Message]:
        """Up to ``most`` more of the inbox's waiting messages at once, oldest first, while their sizes fit in
        ``room`` bytes (a reader that took one asks for those that came with it, in one reply)."""
        taken = []
        with self._cond:
            box = self._boxes.get((task, inbox))
            while box and len(taken) < most and self._size_of(box[0]) <= room:
                room -= self._size_of(box[0])
                taken.append(self._pop(task, inbox))
        return [self._unstore(task, inbox, item) for item in taken]

    def unwatch(self, task: str, inbox: str, wake: Callable[[], None]) -> None:
        """Forget a ``wake`` given to ``take`` that is no longer wanted (its reader stopped waiting)."""
        with self._cond:
            wakes = self._wakes.get((task, inbox), [])
            if wake in wakes:
                wakes.remove(wake)
            if not wakes:
                self._wakes.pop((task, inbox), None)

    def drop_task(self, task: str) -> None:
        with self._cond:
            for key in [k for k in self._boxes if k[0] == task]:
                del self._boxes[key]
            for key in [k for k in self._count if k[0] == task]:
                del self._count[key], self._bytes[key]
            for key in [k for k in self._ids if k[0] == task]:
                del self._ids[key]
            self._forget_task(task)
            self._cond.notify_all()
            wakes = [wake for key in [k for k in self._wakes if k[0] == task] for wake in self._wakes.pop(key)]
        _call_all(wakes)


def _call_all(wakes: list[Callable[[], None]]) -> None:
    """Call the wakes of ``take``, outside the lock (one that fails does not keep the others from their turn)."""
    for wake in wakes:
        try:
            wake()
        except Exception:  # noqa: BLE001 - a waiter's own failure is not the sender's
            log.exception("waking a reader failed")


def _pieces_exactly(stream, size: int):
    """The next ``size`` bytes of ``stream``, in pieces; InvalidInput if it ends before."""
    left = size
    while left:
        piece = stream.read(min(PIECE, left))
        if not piece:
            raise InvalidInput(f"the message ended after {size - left} of its {size} bytes")
        left -= len(piece)
        yield piece


def _read_exactly(stream, size: int) -> bytes:
    return b"".join(_pieces_exactly(stream, size))


def _hash_exactly(stream, size: int) -> str:
    digest = hashlib.sha256()
    for piece in _pieces_exactly(stream, size):
        digest.update(piece)
    return digest.hexdigest()


@dataclass(frozen=True)
class _OnDisk:
    sender: str
    size: int
    path: Path


def _hex(name: str) -> str:
    return name.encode("utf-8").hex()


class DiskMailboxes(Mailboxes):
    """Inboxes in a folder (the local platform's, beside its SQLite database): no accepted message is lost
    when the platform process dies, however (kill -9), and a restart on the same folder delivers them in order.

    Each message is one file ``<task hex>/<inbox hex>/<seq>-<sender hex>[-<message id>]`` (0600, in a 0700
    folder); a broadcast is written once and hard-linked into every inbox. A put writes
    ``.incoming/<seq>.tmp``, renames it to ``.incoming/<seq>``, links it into each inbox and then removes
    ``.incoming/<seq>``: that removal is the commit, and the platform replies only after it. On start a
    leftover in ``.incoming`` is a put that never committed (its sender had no reply and sends again):
    its links are removed, so a message is in every inbox or in none. A message's file is removed once it
    has been handed to its reader (``Message.done``, after the reply was written); one in flight when the
    platform dies comes again after the restart (the round engine ignores a repeat).

    Nothing is fsynced: the files survive the death of the process (the kernel keeps what was written),
    not a crash of the machine or a power cut.
    """

    def __init__(self, directory: str | os.PathLike, max_pending: int = MAX_PENDING,
                 max_pending_bytes: int = MAX_PENDING_BYTES):
        super().__init__(max_pending, max_pending_bytes)
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.directory, 0o700)
        self._incoming = self.directory / ".incoming"
        self._incoming.mkdir(exist_ok=True, mode=0o700)
        self._seq_lock = threading.Lock()
        self._seq = 0
        self._load()

    # ---------------------------------------------------------- start
    def _load(self) -> None:
        unfinished = set()
        for leftover in self._incoming.iterdir():
            if leftover.name.endswith(".tmp"):
                leftover.unlink(missing_ok=True)
            elif leftover.name.isdigit():
                unfinished.add(leftover.name)
        found = []
        for task_dir in self.directory.iterdir():
            if task_dir.name.startswith(".") or not task_dir.is_dir():
                continue
            for inbox_dir in task_dir.iterdir():
                for path in inbox_dir.iterdir():
                    parts = path.name.split("-", 2)
                    if len(parts) < 2 or not parts[0].isdigit():
                        continue
                    if parts[0] in unfinished:
                        path.unlink(missing_ok=True)
                        continue
                    try:
                        task, inbox, sender = (bytes.fromhex(x).decode("utf-8")
                                               for x in (task_dir.name, inbox_dir.name, parts[1]))
                    except ValueError:
                        continue
                    found.append((int(parts[0]), task, inbox, sender, parts[2] if len(parts) > 2 else None, path))
        for name in unfinished:
            (self._incoming / name).unlink(missing_ok=True)
        found.sort(key=lambda f: f[0])
        for seq, task, inbox, sender, message_id, path in found:
            item = _OnDisk(sender, path.stat().st_size, path)
            self._boxes.setdefault((task, inbox), deque()).append(item)
            self._count[(task, inbox, sender)] += 1
            self._bytes[(task, inbox, sender)] += item.size
            if message_id:
                self._remember((task, sender, message_id))
            self._seq = max(self._seq, seq)
        if found:
            log.info("%d message(s) waiting in %s", len(found), self.directory)

    # ---------------------------------------------------------- storage
    def _next_seq(self) -> int:
        with self._seq_lock:
            self._seq += 1
            return self._seq

    def _store(self, task, inboxes, sender, body, message_id):
        seq = f"{self._next_seq():016d}"
        tmp = self._incoming / f"{seq}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(body)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return self._commit(seq, tmp, task, inboxes, sender, len(body), message_id)

    def _store_stream(self, task, inboxes, sender, stream, size, message_id):
        """The body copied from the stream in pieces into ``.incoming/<seq>.tmp`` (removed if the stream
        ends early or breaks), then committed as ``_store`` commits."""
        seq = f"{self._next_seq():016d}"
        tmp, sha, _ = stream_to_file(stream, self._incoming, size, name=seq)
        return self._commit(seq, tmp, task, inboxes, sender, size, message_id), sha

    def _commit(self, seq, tmp, task, inboxes, sender, size, message_id):
        name = f"{seq}-{_hex(sender)}" + (f"-{message_id}" if message_id else "")
        staged = self._incoming / seq
        try:
            os.replace(tmp, staged)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        items = []
        try:
            for inbox in inboxes:
                folder = self.directory / _hex(task) / _hex(inbox)
                folder.mkdir(parents=True, exist_ok=True, mode=0o700)
                os.link(staged, folder / name)
                items.append(_OnDisk(sender, size, folder / name))
        except BaseException:
            for item in items:
                item.path.unlink(missing_ok=True)
            staged.unlink(missing_ok=True)
            raise
        staged.unlink()  # the commit
        return items

    def _unstore(self, task, inbox, item):
        """The message, its body read from its file only when asked (``Message.body``, ``Message.open``)."""
        return Message(item.sender, path=item.path, size=item.size, done=lambda: item.path.unlink(missing_ok=True))

    @staticmethod
    def _size_of(item) -> int:
        return item.size

    def _forget_task(self, task: str) -> None:
        shutil.rmtree(self.directory / _hex(task), ignore_errors=True)
