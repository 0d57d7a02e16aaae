"""The aggregator side of the round engine: a template that owns the round loop.

The base class waits for the quorum, starts the task, runs the setup and the
rounds (broadcast, collect until every active participant answered or the
round deadline passed, aggregate, evaluate, record) and finishes or fails the
task. An algorithm fills in the small methods: ``setup``, ``global_payload``,
``accept_update``, ``aggregate``, ``evaluate``, ``final_model``; and, for
checkpoints, ``checkpoint_state`` and ``restore_state``.

Every update goes to ``accept_update`` through the task's aggregation stack
(``engine/aggregation_stack.py``: DP accounting, POM 2 or 3, the algorithm). An
algorithm whose update is a weighted sum of arrays sets ``weighted_mean_update``
and returns its arrays from ``global_weights`` instead of writing
``global_payload``: the engine then encodes the broadcast, decodes every update
once (``Update.weights``), and POM 2 and 3 apply to it
(``engine/update_aggregation.py`` has the contract).

With a checkpoint folder the state after every round is saved
(``engine/checkpoint.py``); ``run(resume=True)`` continues a STARTED task from it
at the next round, without waiting for the quorum or starting the task again.
An interrupt (Ctrl-C) after the first checkpoint leaves the task STARTED for
such a resume instead of failing it; the participants keep waiting. A resumed
aggregator sends the set-up again (``broadcast_setup`` keeps it in the checkpoint;
participants that kept theirs ignore an identical one), and a participant that was
restarted asks for it (``resync``): it gets the set-up and the request of the
exchange under way again, so every participant goes on from the current model. The
definition's ``early_stopping`` ends the task COMPLETE before its last round
(``engine/early_stopping.py``); the reason is recorded with the round.

What the aggregator signs for the ledger and checks an update against is in
``engine/ledger_steps.py``. The channel is the aggregator handle of whatever
transport (HTTP, AMQP, in one process); nothing here imports the client or the
platform.
"""
from __future__ import annotations

import base64
import logging
import time

from werkbund.algorithms.arrays import UpdateRejected, encode_weights
from werkbund.algorithms.engine.aggregation_stack import build_aggregation
from werkbund.algorithms.engine.broadcast import Broadcast, Collected, sha256_hex as _sha
from werkbund.algorithms.engine.checkpoint import Checkpoint, CheckpointError
from werkbund.algorithms.engine.early_stopping import EarlyStopping
from werkbund.algorithms.engine.errors import TaskFailure
from werkbund.algorithms.engine.progress import Progress
from werkbund.algorithms.engine.ledger_steps import LedgerSteps
from werkbund.algorithms.metrics import combine, headline

log = logging.getLogger("werkbund.aggregator")

MAX_SAMPLES = 10**12  # the platform's bound on a declared row count (platform/join_schema.py MAX_DECLARED_SAMPLES)

__all__ = ["RoundAggregator", "TaskFailure"]


class RoundAggregator(LedgerSteps):
    """Template for the aggregator of a round-based federated algorithm."""

    weighted_mean_update = False  # True: the update is arrays and a sample count, combined from their mean
    # True: once a round's updates come in (``accept_update``), the algorithm may overwrite the arrays
    # ``global_weights`` returned (to use their memory for its running sum, say); the engine then keeps
    # the round's broadcast in a temporary file for a restarted participant instead of making it again
    # from them. POM 1 only: the layers of POM 2 and 3 keep the round's arrays (registry.Algorithm checks).
    reuses_global_arrays = False
    dp = None  # the DP budget (privacy/dp/budget.py) of a task with "dp", made by the algorithm's DP-SGD setup

    def __init__(self, channel, holdout=None, progress: Progress | None = None,
                 quorum_timeout: float | None = None, checkpoint_dir=None):
        self.channel = channel
        self.definition = channel.definition
        self.holdout = holdout
        self.progress = progress or Progress()
        self.quorum_timeout = quorum_timeout
        self.active: list[str] = []
        self.schema: dict | None = None
        self.declared: dict[str, int] = {}  # rows each participant declared at join: its updates' bound
        self._setup_rejected: dict[str, str] = {}  # set-up answers refused (statistics, keys): for round 1's record
        self.history: list[dict] = []
        self._pending: dict | None = None
        self._receipts: dict | None = None  # the last relay's proofs, for the next broadcast (ledger_relay.py)
        self._held_record: dict | None = None  # a round's record, sent with the next relay (ledger_steps.py)
        self.aggregation = build_aggregation(self)  # DP accounting -> POM 2/3 -> accept_update
        self.checkpoint = Checkpoint(checkpoint_dir, channel.task, self.definition) if checkpoint_dir else None
        self.early_stopping = EarlyStopping.from_definition(self.definition.get("early_stopping"))
        self.stop_reason: str | None = None
        self._left: dict[str, str] = {}  # participants that stopped between two exchanges, with the reason
        self._setup: tuple[bytes, dict] | None = None  # the set-up broadcast, sent again to a restarted participant

    # ------------------------------------------------------------- hooks
    def setup(self) -> None:
        """Prepare the model (may call ``exchange`` for statistics); runs after the task started."""

    def global_weights(self) -> list:
        """The arrays the round starts from (an algorithm with ``weighted_mean_update``)."""
        raise NotImplementedError

    def global_payload(self) -> tuple[bytes, dict]:
        """The round's (and the final) broadcast: payload bytes and header fields."""
        if self.weighted_mean_update:
            return encode_weights(self.global_weights()), {}
        raise NotImplementedError

    def begin_round(self, number: int) -> None:
        pass

    def accept_update(self, update) -> None:
        """Validate and take in one update (``Update``: message-like, and with ``weighted_mean_update``
        its decoded, checked ``weights``); raise UpdateRejected to refuse it."""
        raise NotImplementedError

    def aggregate(self, number: int) -> None:
        raise NotImplementedError

    def evaluate(self) -> dict:
        """Metrics of the current global model on the aggregator's own held-out data ({} if none)."""
        return {}

    def round_metrics(self, number: int) -> dict:
        """Extra entries for round ``number``'s record (e.g. the privacy spent); may call ``_stop_if``."""
        return {}

    def final_model(self) -> tuple[bytes, dict]:
        raise NotImplementedError

    def write_results(self, directory) -> list[str]:
        """Files of the algorithm's own (plots, reports) written into ``directory`` at the end; their paths."""
        return []

    def checkpoint_state(self) -> tuple[list, dict, dict]:
        """(global weights, strategy state arrays, JSON-able facts to rebuild the model) for a checkpoint."""
        raise NotImplementedError

    def restore_state(self, weights: list, strategy_state: dict, meta: dict) -> None:
        """Rebuild the model and strategy from what ``checkpoint_state`` returned (instead of ``setup``)."""
        raise NotImplementedError

    def broadcast_setup(self, payload: bytes = b"", **header) -> None:
        """Send the model's set-up to every participant and keep it: a restarted participant (or every one,
        after ``run(resume=True)``) gets it again."""
        self._setup = (bytes(payload), dict(header))
        self.channel.broadcast("setup", payload, round=-1, **header)

    @property
    def pom(self):
        """The privacy mode's layer of the aggregation stack (POM 2 or 3), None for POM 1."""
        return self.aggregation.layer()

    # ------------------------------------------------------------ driver
    def run(self, resume: bool = False) -> dict:
        d = self.definition
        number = self._resume() if resume else self._start()
        try:
            if not resume:
                self.setup()
            elif self._setup is not None:  # participants that were restarted meanwhile have no model
                self.channel.broadcast("setup", self._setup[0], round=-1, **self._setup[1])
            self.aggregation.setup()
            self.progress.rounds_started(d["rounds"])
            while number < d["rounds"] and not self.stop_reason:
                self._run_round(number)
                number += 1
            return self._finish()
        except TaskFailure as exc:
            self._fail(str(exc))
            raise
        except KeyboardInterrupt:
            if self.checkpoint is None or not self.checkpoint.exists():
                self._fail("aggregator interrupted")
                raise
            self.progress.message(f"interrupted; task {self.channel.task} stays STARTED and its participants wait; "
                                  f"continue it with `werkbund aggregate --task {self.channel.task} --resume`")
            raise
        except BaseException as exc:
            self._fail(f"aggregator error: {type(exc).__name__}: {exc}")
            raise

    def _start(self) -> int:
        self.progress.message(f"task {self.channel.task}: waiting for the quorum of {self.definition['quorum']}")
        members = self.channel.wait_for_quorum(
            timeout=self.quorum_timeout,
            on_progress=lambda joined, quorum: self.progress.message(f"{joined} of {quorum} participants joined"),
        )
        info = self.channel.start()
        self.active = [m["user"] for m in members]
        self.declared = {m["user"]: (m.get("schema") or {}).get("n_samples") for m in members
                         if isinstance((m.get("schema") or {}).get("n_samples"), int)}
        self.schema = info.get("schema")
        self.progress.message(f"quorum met: {', '.join(self.active)}; task STARTED")
        return 0

    def _resume(self) -> int:
        """Load the last checkpoint of a STARTED task; return the round to go on with."""
        if self.checkpoint is None:
            raise CheckpointError("resuming needs the folder of the task's checkpoints")
        state, weights, strategy_state = self.checkpoint.load()
        status = self.channel.info()["status"]
        if status != "STARTED":
            raise CheckpointError(f"task {self.channel.task!r} is {status}; only a STARTED task can resume"
                                  + (" (run the aggregator without --resume)" if status == "CREATED" else ""))
        self.active, self.schema = list(state["active"]), state.get("schema")
        self.declared = dict(state.get("declared") or {})
        self.history, self._pending = list(state.get("history") or []), state.get("pending")
        self.stop_reason = state.get("stop_reason")
        if self._relayed:  # the last round's statements, signed but not yet on the log when it stopped
            self.channel.restore_relay_queue(state.get("ledger_queue") or [])
        if isinstance(state.get("held_record"), dict):  # and the record of the round before, if it waited too
            self._record(state["held_record"], last=False)
        setup = state.get("setup")
        if isinstance(setup, dict):
            self._setup = (base64.b64decode(setup.get("payload") or ""), dict(setup.get("header") or {}))
        if self.early_stopping is not None:
            self.early_stopping.load(state.get("early_stopping") or {})
        try:
            self.restore_state(weights, strategy_state, state.get("algorithm") or {})
            self.aggregation.restore_checkpoint(state.get("aggregation") or {})
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"the checkpoint {self.checkpoint.state_path} does not fit this task: "
                                  f"{exc}") from None
        done = int(state["round"])
        self.progress.message(f"task {self.channel.task}: resumed from the checkpoint of round {done + 1} "
                              f"({self.checkpoint.state_path}); participants {', '.join(self.active)}")
        return done + 1

    def _save_checkpoint(self, number: int) -> None:
        if self.checkpoint is None:
            return
        try:
            weights, strategy_state, meta = self.checkpoint_state()
        except NotImplementedError:
            log.info("%s keeps no checkpoints", type(self).__name__)
            self.checkpoint = None
            return
        early = self.early_stopping.state() if self.early_stopping is not None else None
        self.checkpoint.save(number, weights, strategy_state, {
            "active": self.active, "schema": self.schema, "declared": self.declared, "history": self.history,
            "pending": self._pending,
            "setup": None if self._setup is None else {"payload": base64.b64encode(self._setup[0]).decode("ascii"),
                                                        "header": self._setup[1]},
            "stop_reason": self.stop_reason, "early_stopping": early, "algorithm": meta,
            "aggregation": self.aggregation.checkpoint_state(),
            "ledger_queue": self.channel.relay_queue() if self._relayed else [], "held_record": self._held_record})

    def exchange(self, kind: str, payload: bytes = b"", expect: str = "", number: int = -1,
                 handler=None, among: list[str] | None = None, minimum: int | None = None,
                 **header) -> Collected:
        """Broadcast a request and collect the replies of kind ``expect`` until all active answered.

        ``payload``: bytes, or a ``Broadcast`` (the round's, which a large model need not keep in memory);
        ``among``: ask only these active participants (one message each instead of a broadcast);
        ``minimum``: the fewest valid replies that let the task go on (default: ``min_updates``).
        """
        held = payload if isinstance(payload, Broadcast) else Broadcast(payload)
        del payload
        if among is None:
            self.channel.broadcast(kind, held.payload(), round=number, **held.known_sha256, **header)
            waiting = set(self.active)
        else:
            waiting = {p for p in among if p in self.active}
            for participant in sorted(waiting):
                self.channel.send(participant, kind, held.payload(), round=number, **held.known_sha256, **header)
        held.sent()
        collected = Collected()
        leaving: set[str] = set()
        deadline = time.monotonic() + float(self.definition["round_timeout"])
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            message = None  # the last one is handled: not held while the next arrives (a GiB each)
            message = self.channel.receive(timeout=min(remaining, 30.0))
            if message is None:
                continue
            sender = message.sender
            if message.kind == "resync":  # a restarted participant: the set-up, and this request if it owes one
                self._resync(sender, sender in waiting, kind, held, number, header)
                continue
            if sender not in waiting:
                if message.kind == "error" and message.get("leaving") is True and sender in self.active:
                    self._left[sender] = f"participant reported: {message.get('reason', 'it left')}"
                    self.active = [p for p in self.active if p != sender]
                    self.progress.message(f"{sender} stopped taking part; going on without it")
                    continue
                log.info("ignoring %s from %s (not expected now)", message.kind, sender or "?")
                continue
            if message.kind == "malformed":
                reason = f"malformed message: {message.extra.get('error')}"
            elif message.kind == "error":
                reason = f"participant reported: {message.get('reason', 'an error')}"
                if message.get("leaving") is True:  # it stopped: no later round waits for it
                    leaving.add(sender)
            elif message.kind != expect or message.get("round") != number:
                log.info("ignoring stale %s (round %s) from %s", message.kind, message.get("round"), sender)
                continue
            else:
                try:
                    if handler is not None:
                        handler(message)
                    collected.accepted.append(sender)
                    collected.headers[sender] = message.header
                    waiting.discard(sender)
                    continue
                except UpdateRejected as exc:
                    reason = str(exc)
            collected.rejected[sender] = reason
            waiting.discard(sender)
            log.warning("round %d: rejected %s from %s: %s", number, expect or kind, sender, reason)
            self.progress.message(f"rejected {expect or kind} from {sender}: {reason}")
        collected.missing = sorted(waiting)
        if number < 0:
            self._setup_rejected.update({s: f"{expect or kind}: {why}" for s, why in collected.rejected.items()})
        collected.rejected.update(self._left)  # those that left while no exchange waited for them
        self._left = {}
        if leaving:
            self.progress.message(f"{', '.join(sorted(leaving))} stopped taking part; going on without them")
            self.active = [p for p in self.active if p not in leaving]
        if collected.missing:
            self.progress.message(f"no answer from {', '.join(collected.missing)} before the deadline; "
                                  "going on without them")
            self.active = [p for p in self.active if p not in waiting]
        minimum = self.definition["min_updates"] if minimum is None else minimum
        if len(collected.accepted) < minimum:
            raise TaskFailure(
                f"round {number}: only {len(collected.accepted)} valid {expect or 'replies'} "
                f"(minimum {minimum}); rejected: {collected.rejected or 'none'}; "
                f"no answer: {', '.join(collected.missing) or 'none'}"
            )
        return collected

    def _resync(self, sender: str, owes: bool, kind: str, held: Broadcast, number: int, header: dict) -> None:
        if sender not in self.active:
            log.info("ignoring resync from %s (not an active participant)", sender or "?")
            return
        self.progress.message(f"{sender} was restarted; sending it the set-up"
                              + (f" and the request of round {number + 1} again" if owes and number >= 0 else
                                 f" and the {kind} request again" if owes else ""))
        self.channel.send(sender, "resynced", round=number)  # what the participant got before this is stale
        if self._setup is not None:
            self.channel.send(sender, "setup", self._setup[0], round=-1, **self._setup[1])
        if owes:
            self.channel.send(sender, kind, held.payload(), round=number, **held.known_sha256, **header)

    # ----------------------------------------------------------- internals
    def _run_round(self, number: int) -> None:
        started = time.monotonic()
        self.begin_round(number)
        weights = self.global_weights() if self.weighted_mean_update else None
        payload, header = self.global_payload()
        held = Broadcast(payload, spool=True) if self.reuses_global_arrays else \
            Broadcast(payload, (lambda: self.global_payload()[0]) if self.weighted_mean_update else None)
        del payload
        self._publish("round_started", {"round": number, "global_sha256": held.sha256})
        self._relay()  # (the last round's statements and this one's round_started: on the log before it is sent)
        # the stack may add header fields (POM 2: the key set-up and shares riding on the broadcast)
        header = {**header, **self.aggregation.begin_round(number, weights), **self._receipts_header()}
        del weights  # (the stack keeps what it needs of them)
        try:
            collected = self.exchange("round", held, expect="update", number=number,
                                      handler=self._checked_accept(number), **header)
        finally:
            held.close()
        if self._relayed and self.aggregation.layer() is not None:
            # a privacy mode's layer reads the round's statements (POM 3's decryptors) or appends its own
            # entries in end_round: they go on the log first; under POM 1 they wait for the round's one relay
            self.channel.flush_relay()
        self.aggregation.end_round(number, collected)  # POM 2/3: unmask or decrypt, accept_update gets the mean
        self._complete_pending(collected.headers)
        self.aggregate(number)
        if self._ledger:  # (relayed: with the next round's round_started, or before the final model)
            self._publish("aggregate_published", {"round": number, "sha256": _sha(self.global_payload()[0]),
                                                  "updates": sorted(collected.accepted)})
            if not self._relayed:
                self.channel.audit_ledger()
        own = self.evaluate()
        train = {p: {"loss": h.get("train_loss"), "n_train": h.get("n_samples")} for p, h in collected.headers.items()}
        self._pending = {"number": number, "reported": collected.accepted, "rejected": collected.rejected,
                         "missing": collected.missing, "train": train, "aggregator": own,
                         "duration_s": round(time.monotonic() - started, 3)}
        if (self.early_stopping is not None and self.early_stopping.source == "aggregator"
                and number < self.definition["rounds"] - 1):
            self._stop_if(self.early_stopping.observe(number, own.get(self.early_stopping.metric)), self._pending)
        # the algorithm's figures, then the stack's: "dp" (epsilon spent), "pom" (who took part in the sum)
        self._pending["extra"] = {**self.round_metrics(number), **self.aggregation.round_record(number)}
        self._save_checkpoint(number)
        summary = f"{len(collected.accepted)} updates ({', '.join(collected.accepted)})"
        if own:
            summary += ", held-out " + headline(own)
        self.progress.round_done(number, self.definition["rounds"], summary)

    def _stop_if(self, reason: str | None, record: dict) -> None:
        """Stop after the current round; the reason goes into ``record`` (a round's metrics)."""
        if reason and not self.stop_reason:
            self.stop_reason = reason
            record["stopped"] = reason
            self.progress.message(reason)

    def _check_sample_count(self, message) -> None:
        """An update weighs by its sample count: a count above the rows its sender declared at join (or
        not a whole number) would let one participant outweigh all the others, so it is refused."""
        n = message.get("n_samples")
        if n is None:
            return
        if not isinstance(n, int) or isinstance(n, bool) or n < 1 or n > MAX_SAMPLES:
            raise UpdateRejected(f"the update's sample count {n!r} is not a whole number between 1 and {MAX_SAMPLES}")
        declared = self.declared.get(message.sender)
        if declared is not None and n > declared:
            raise UpdateRejected(f"the update claims {n} training samples, but {message.sender} declared "
                                 f"{declared} rows when it joined")

    def _complete_pending(self, headers: dict[str, dict], last: bool = False) -> None:
        """Record the previous round with the participants' evaluation of its aggregate."""
        if self._pending is None:
            return
        pending, self._pending = self._pending, None
        evals = {p: h["eval"] for p, h in headers.items() if isinstance(h.get("eval"), dict)}
        metrics = {"participants": evals, "train": pending["train"], "duration_s": pending["duration_s"]}
        metrics.update(combine(evals))
        if pending["aggregator"]:
            metrics["aggregator"] = pending["aggregator"]
        metrics.update(pending.get("extra") or {})
        if self._setup_rejected:  # the first record after the set-up says whose set-up answer was refused
            metrics["setup_rejected"], self._setup_rejected = self._setup_rejected, {}
        if pending.get("stopped"):
            metrics["stopped"] = pending["stopped"]
        # the round now running is pending + 1: stopping after it changes something only if it is not the last
        if (self.early_stopping is not None and self.early_stopping.source == "participants" and not last
                and pending["number"] + 2 < self.definition["rounds"]):
            self._stop_if(self.early_stopping.observe(pending["number"], metrics.get(self.early_stopping.metric)),
                          metrics)
        self._record({"number": pending["number"], "reported": list(pending["reported"]),
                      "rejected": pending["rejected"], "missing": list(pending["missing"]), "metrics": metrics},
                     last)
        self.history.append({"round": pending["number"], **metrics})
        if headline(metrics):
            self.progress.message(f"round {pending['number'] + 1}: participants' combined test {headline(metrics)}")

    def _finish(self) -> dict:
        self._relay()
        payload, header = self.global_payload()
        held = Broadcast(payload, (lambda: self.global_payload()[0]) if self.weighted_mean_update else None)
        del payload
        collected = self.exchange("final", held, expect="final_eval", number=self.definition["rounds"], **header,
                                  **self._receipts_header())
        self._complete_pending(collected.headers, last=True)  # nothing left to stop
        model, meta = self.final_model()
        meta = dict(meta, history=self.history)
        if self.stop_reason:
            meta["stopped_early"] = self.stop_reason
        info = self.channel.finish(model, meta, reason=self.stop_reason)
        self.progress.message(f"task {self.channel.task} COMPLETE; final model stored ({len(model)} bytes)"
                              + (f"; {self.stop_reason}" if self.stop_reason else ""))
        return {"task": info, "history": self.history, "model_bytes": len(model), "stopped_early": self.stop_reason}

    def _fail(self, reason: str) -> None:
        log.error("task %s failed: %s", self.channel.task, reason)
        if self._held_record is not None:  # the last recorded round, which waited for the next relay
            try:
                self.channel.record_round(**self._held_record)
            except Exception as exc:
                log.warning("could not record round %s: %s", self._held_record["number"] + 1, exc)
        if self._relayed:  # what was submitted goes on the log before the failure does
            try:
                self.channel.flush_relay()
            except Exception as exc:
                log.warning("could not append the round's ledger statements: %s", exc)
        try:
            self.channel.broadcast("failed", b"", reason=reason)
        except Exception as exc:  # the task may already be unusable; the platform record matters more
            log.warning("could not tell the participants: %s", exc)
        try:
            self.channel.fail(reason)
        except Exception as exc:
            log.warning("could not mark the task FAILED: %s", exc)

