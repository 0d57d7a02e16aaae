"""A virtual participant: the algorithm's own participant class, driven one message at a time.

The participant is the unchanged ``RoundParticipant`` subclass of the task's algorithm, over the
real ``ParticipantHandle`` (frames decoded and checked as for any participant). Only its
transport differs: :class:`SiteTransport` takes messages from the site's own queue, which the
dispatcher fills, and instead of waiting when the queue is empty it raises :class:`Suspend`.
That ends ``RoundParticipant.run`` for now without touching the participant's state (its model,
optimizer, random generator live in the object); the next message calls ``run`` again and the
participant goes on where it was. So a virtual participant holds no thread while it waits, and a
bounded pool of workers serves any number of them.
"""
from __future__ import annotations

import logging
import threading
from collections import deque

from werkbund.algorithms.engine.participant import TaskEnded
from werkbund.algorithms.engine.progress import Progress
from werkbund.client.api import ParticipantHandle, User
from werkbund.client.transports.base import Transport
from werkbund.platform.errors import InvalidState, PermissionDenied

log = logging.getLogger("werkbund.simulation")


class Suspend(BaseException):
    """No message is waiting: the virtual participant gives its worker back (not an error).

    A BaseException, like KeyboardInterrupt, so the engine's ``except Exception`` around a
    message's handling never mistakes it for a failure.
    """


class Quiet(Progress):
    """A virtual participant's progress: nothing (a thousand of them would drown the display)."""

    def message(self, text):
        pass

    def round_done(self, number, total, summary):
        pass

    def epoch_done(self, epoch, total, logs):
        pass


class SiteTransport(Transport):
    """The transport of one virtual participant: a queue in, a function out, no waiting.

    ``send`` is ``SimPlatform.send_as`` in this process (the core's route, the real mailboxes), or
    collects the frames for the driver in a Ray worker. ``control`` runs control commands as the
    user (the core's ``dispatch``), where there is a core in the process.
    """

    participant_state_base = None  # a virtual participant keeps its state (a DP account) in memory only

    def __init__(self, name: str, send, control=None):
        self.user = name
        self.inbox: deque = deque()
        self._send = send
        self._control = control

    def register(self, user, password, org):
        raise InvalidState("virtual participants are made by the simulation")

    def login(self, user, password):
        raise InvalidState("virtual participants are made by the simulation")

    def call(self, command, **params):
        if self._control is None:
            raise InvalidState(f"{command}: no platform core in this worker process")
        return self._control(self.user, command, params)

    def send(self, task, to, body):
        return self._send(self.user, task, to, body)

    def receive(self, task, timeout):
        try:
            return self.inbox.popleft()
        except IndexError:
            raise Suspend() from None

    def put_model(self, task, data, meta):
        raise PermissionDenied("participants do not store models")

    def get_model(self, task):
        raise PermissionDenied("a virtual participant does not download the model")


class VirtualParticipantHandle(ParticipantHandle):
    """A ``ParticipantHandle`` made from the task's details fetched once for all virtual participants
    (one ``task_info`` each would cost N reads of N memberships). The enrolment made it a member."""

    restartable = False  # never run again after a crash: the engine keeps no run mark for a resync

    def __init__(self, user: User, task: str, info: dict):
        self.user = user
        self.transport = user.transport
        self.task = task
        self._info = dict(info)


class Site:
    """One virtual participant and its state on the backend: running, done, its result or error."""

    def __init__(self, name: str, participant, transport: SiteTransport):
        self.name = name
        self.participant = participant
        self.transport = transport
        self.lock = threading.Lock()
        self.running = False
        self.again = False
        self.done = False
        self.result: dict | None = None
        self.error: str | None = None

    def step(self) -> None:
        """Handle every message waiting in the queue (the participant's own ``run``), then yield."""
        if self.done:
            self.transport.inbox.clear()
            return
        try:
            self.result = self.participant.run()
            self.done = True
        except Suspend:
            return
        except TaskEnded as exc:
            self.error, self.done = str(exc), True
        except BaseException as exc:  # a bug or a resource error: the aggregator notices the silence
            log.exception("virtual participant %s stopped", self.name)
            self.error, self.done = f"{type(exc).__name__}: {exc}", True
        self.transport.inbox.clear()
