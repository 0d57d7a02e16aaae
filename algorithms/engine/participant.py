"""The participant side of the round engine, mirroring the aggregator's template.

The base class waits for the aggregator's messages and answers them: ``stats``
(feature moments for federated standardization), ``setup`` (the model), ``round``
(train on the global weights, send the update) and ``final`` (keep the final
model, report its evaluation). A ``failed`` message ends the run with the reason.
An algorithm fills in ``moments``, ``configure``, ``train``, ``evaluate`` and
``keep_final``.

``train`` returns the update as a list of arrays (and its header, with
``n_samples``); the engine encodes it with the task's ``UpdateEncoding`` (POM 1:
safetensors, POM 2: masked, POM 3: encrypted), publishes the sha256 of exactly
those bytes on the ledger and sends them. ``global_weights(message)`` gives the
arrays a round or final message carries, decoded once per message.
"""
from __future__ import annotations

import hashlib
import logging
import time

from werkbund.algorithms.arrays import check_weights, decode_weights
from werkbund.algorithms.engine.aggregation_stack import build_encoding
from werkbund.algorithms.engine.progress import Progress

log = logging.getLogger("werkbund.participant")

IDLE_CHECK_SECONDS = 30.0


class TaskEnded(RuntimeError):
    """The task failed or disappeared while this participant waited."""


class RoundParticipant:
    def __init__(self, channel, train, test, progress: Progress | None = None, out_model=None,
                 idle_timeout: float | None = None):
        self.channel = channel
        self.definition = channel.definition
        self.train_data = train
        self.test_data = test
        self.progress = progress or Progress()
        self.out_model = out_model
        self.idle_timeout = idle_timeout
        self.result: dict = {}
        self._received = None  # (message, its arrays) once global_weights decoded them
        self.encoding = build_encoding(self)  # how the update goes on the wire: plain, masked or encrypted

    @property
    def pom(self):
        """The participant's side of the privacy mode (POM 2 or 3), None for POM 1."""
        return self.encoding if self.encoding.privacy_mode != 1 else None

    def global_weights(self, message, expected=None) -> list:
        """The arrays in ``message`` (a round or the final model), decoded once per message and read-only;
        with ``expected`` ((shape, dtype) per array) checked against it, finite values only."""
        if self._received is None or self._received[0] is not message:
            weights = decode_weights(message.payload)
            for w in weights:
                w.flags.writeable = False
            self._received = (message, weights)
        weights = self._received[1]
        if expected is not None:
            check_weights(weights, expected)
        return weights

    # ------------------------------------------------------------- hooks
    def moments(self) -> dict:
        raise NotImplementedError

    def configure(self, message) -> None:
        raise NotImplementedError

    def train(self, message) -> tuple[list, dict]:
        """Train on the global weights in ``message``; return the update (a list of arrays) and header
        fields, ``n_samples`` among them."""
        raise NotImplementedError

    def evaluate_global(self, message) -> dict:
        raise NotImplementedError

    def keep_final(self, message) -> dict:
        raise NotImplementedError

    # ------------------------------------------------------------ driver
    def run(self) -> dict:
        self.progress.message(f"task {self.channel.task}: waiting for the aggregator")
        idle_since = time.monotonic()
        while True:
            message = self.channel.receive(timeout=IDLE_CHECK_SECONDS)
            if message is None:
                self._check_still_running(idle_since)
                continue
            idle_since = time.monotonic()
            if message.kind == "failed":
                raise TaskEnded(f"task {self.channel.task} failed: {message.get('reason', 'no reason given')}")
            if message.kind == "malformed":
                log.warning("dropping a malformed message: %s", message.extra.get("error"))
                continue
            number = message.get("round", -1)
            try:
                if message.kind == "stats":
                    self.channel.send("stats", b"", round=number, **self.moments())
                elif message.kind == "dp_plan":  # DP-SGD: the training-set size the noise is calibrated for
                    self.channel.send("dp_plan", b"", round=number, n_train=int(len(self.train_data)))
                elif message.kind == "setup":
                    self.configure(message)
                elif message.kind == "round":
                    evaluation = self.evaluate_global(message)
                    update, header = self.train(message)
                    payload, header = self.encoding.encode(message, update, header)  # the bytes on the wire
                    self._publish_metadata(number, payload, header, evaluation)
                    self.channel.send("update", payload, round=number, eval=evaluation, **header)
                    self._audit_ledger()
                elif message.kind == "final":
                    self.result = self.keep_final(message)
                    self.channel.send("final_eval", b"", round=number, eval=self.result.get("eval", {}))
                    self.progress.message(f"task {self.channel.task}: final model received")
                    return self.result
                elif message.kind in self.encoding.kinds:  # a privacy mode's own exchanges
                    self.encoding.handle(message)
                elif message.kind == "skipped":
                    log.warning("round %s: the aggregator skipped this update: %s", number, message.get("reason"))
                    self.progress.message(f"round {number}: update skipped: {message.get('reason')}")
                else:
                    log.info("ignoring a message of kind %r", message.kind)
            except TaskEnded:
                raise
            except Exception as exc:  # tell the aggregator instead of leaving it waiting
                log.exception("could not handle %s of round %s", message.kind, number)
                self.channel.send("error", b"", round=number, reason=f"{type(exc).__name__}: {exc}")

    def _publish_metadata(self, number: int, payload: bytes, header: dict, evaluation: dict) -> None:
        """Metadata before the model (Fujitsu): the update's sha256, sample count and local
        validation metrics go on the ledger before the update itself is sent."""
        if getattr(self.channel, "ledger_enabled", False):
            self.channel.publish_entry("update_submitted", {
                "round": number, "sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload),
                "n_samples": header.get("n_samples"), "train_loss": _json_safe(header.get("train_loss")),
                "validation": _json_safe(evaluation)})

    def _audit_ledger(self) -> None:
        """Own update entries included, checkpoint consistent with the last one seen; cosign."""
        if getattr(self.channel, "ledger_enabled", False):
            try:
                checked = self.channel.audit_ledger()
            except Exception as exc:
                raise TaskEnded(f"ledger check failed in task {self.channel.task}: {exc}") from exc
            log.info("ledger: checkpoint %s verified and cosigned (%s own entries included)",
                     checked["size"], checked["own_entries"])

    def _check_still_running(self, idle_since: float) -> None:
        info = self.channel.info()
        if info["status"] in ("FAILED", "COMPLETE"):
            reason = info.get("reason") or "no reason given"
            raise TaskEnded(f"task {self.channel.task} is {info['status']}: {reason}")
        if self.idle_timeout is not None and time.monotonic() - idle_since > self.idle_timeout:
            raise TaskEnded(f"no message from the aggregator of {self.channel.task} in {self.idle_timeout:.0f} s")


def _json_safe(value):
    """Numbers as plain JSON (non-finite floats become None) for a canonical ledger entry."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if number != number or number in (float("inf"), float("-inf")):
        return None
    return int(value) if isinstance(value, int) else number
