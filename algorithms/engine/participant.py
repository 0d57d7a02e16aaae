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

In a task with differential privacy (``dp``) the participant's test metrics of each
aggregate stay on its machine (shown in its own progress and result): they are
statistics of its records without noise, so neither the update, the final
evaluation nor the ledger carries them. ``state_dir`` (by default the channel's) is
where the participant keeps its own state of the task across restarts: its DP account.

A participant run again after it was stopped or killed (its ``state_dir`` holds the mark of an
earlier run) asks the aggregator for a ``resync`` and drops what its inbox held until the
answer (``resynced``), then takes the set-up and the request under way sent with it. A set-up
identical to the one it has is ignored (a resumed aggregator sends it to all); a round it already
answered is answered again with the same update bytes (a resumed aggregator may ask twice), also
after a restart: the last update is kept in ``state_dir`` (``last-update.json``, with a small update's
bytes inside it and a larger one's in ``last-update.bin`` beside it, 0600, written before its metadata
goes on the ledger), so a restarted participant never trains a round
again for which it sent an update. Only where the privacy mode says the bytes no longer fit the round
(POM 2 after the aggregator ran the round again under new keys) is the same update encoded again
(``UpdateEncoding.encode_again``).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import time
from pathlib import Path

from werkbund.algorithms.arrays import check_weights, decode_weights
from werkbund.algorithms.engine.aggregation_stack import build_encoding
from werkbund.algorithms.engine.progress import Progress
from werkbund.algorithms.engine.state_files import StateFileError, json_bytes, read_json, write_private

log = logging.getLogger("werkbund.participant")

IDLE_CHECK_SECONDS = 30.0
RUN_MARK = "participant-ran"  # in state_dir: this participant ran in the task before (a restart resyncs)
# in state_dir: .json (round, header, sha256) of the last update, and its bytes: a small one's inside it
# (payload_b64), a larger one's in .bin beside it
LAST_UPDATE = "last-update"
KEEP_IN_MEMORY_BELOW = 16 * 1024 * 1024  # bytes: a larger last update is held on disk only
# bytes: a smaller last update is kept inside its .json (base64), one file written and synced a round, not two
KEEP_IN_ONE_FILE_BELOW = 1024 * 1024


class TaskEnded(RuntimeError):
    """The task failed or disappeared while this participant waited."""


class RoundParticipant:
    dp = None  # the participant's DP budget (privacy/dp/budget.py) in a task with "dp", from the setup

    def __init__(self, channel, train, test, progress: Progress | None = None, out_model=None,
                 idle_timeout: float | None = None, state_dir=None):
        self.channel = channel
        self.state_dir = state_dir if state_dir is not None else getattr(channel, "state_dir", None)
        self.definition = channel.definition
        self.train_data = train
        self.test_data = test
        self.progress = progress or Progress()
        self.out_model = out_model
        self.idle_timeout = idle_timeout
        self.result: dict = {}
        self._received = None  # (message, its arrays) once global_weights decoded them
        self._ran = False          # run() was called before (a simulation calls it once per message)
        self._awaiting_resync = False
        self._setup_key: str | None = None         # digest of the set-up this participant is configured with
        self._last_update: tuple | None = None     # (round, payload, header) of the last update sent
        self.restarted = False  # this run follows an earlier one of the same participant (its state_dir says so)
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
        if not self._ran:
            self._ran = True
            self.progress.message(f"task {self.channel.task}: waiting for the aggregator")
            if self._restarted():
                self.restarted = True
                self._last_update = self._stored_update()
                self.progress.message(f"task {self.channel.task}: this participant ran before; asking the "
                                      "aggregator for the set-up and the current model")
                self._awaiting_resync = True
                self.channel.send("resync", b"", round=-1)
        idle_since = time.monotonic()
        while True:
            message = self._received = None  # the last one is handled: not held while the next arrives
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
            if message.kind == "resynced":
                self._awaiting_resync = False
                continue
            if self._awaiting_resync:
                log.info("dropping %s of round %s sent before the resync", message.kind, message.get("round"))
                continue
            number = message.get("round", -1)
            try:
                if message.kind == "setup" and self._same_setup(message):
                    log.info("ignoring a set-up identical to the one this participant has")
                elif message.kind == "round" and self._last_update is not None and self._last_update[0] == number:
                    self._send_again(message, number)
                elif message.kind == "stats":
                    self.channel.send("stats", b"", round=number, **self.moments())
                elif message.kind == "dp_plan":  # DP-SGD: the training-set size the noise is calibrated for
                    self.channel.send("dp_plan", b"", round=number, n_train=int(len(self.train_data)))
                elif message.kind == "setup":
                    self.configure(message)
                    self._setup_key = _setup_digest(message)
                elif message.kind == "round":
                    self._take_receipts(message)
                    evaluation = self._released(number, self.evaluate_global(message))
                    update, header = self.train(message)
                    if not self.encoding.reads_round_model:  # at a GiB: the round's model is not held beside
                        self._received, message.payload = None, b""  # the update and its bytes from here on
                    payload, header = self.encoding.encode(message, update, header)  # the bytes on the wire
                    update = None  # (at a GiB: the arrays are not held beside their bytes from here on)
                    # hashed once where the ledger needs it too: for the entry and for state_dir
                    digest = hashlib.sha256(payload).hexdigest() if getattr(self.channel, "ledger_enabled", False) else None
                    self._keep_update(number, payload, {"eval": evaluation, **header}, digest)
                    hint = self._publish_metadata(number, payload, header, evaluation, digest)
                    log.info("round %s: sending the update", number + 1)  # (its statement, if any, is signed)
                    self.channel.send("update", payload, round=number, eval=evaluation, **header, **hint,
                                      **({"payload_sha256": digest} if digest else {}))
                    self.progress.message(f"round {number + 1}: update sent ({len(payload)} bytes)")
                    payload = None  # kept by _keep_update where it is needed again, not by this loop
                    if not self._relayed:  # (relayed: proven by the receipts on the next broadcast)
                        self._audit_ledger()
                elif message.kind == "final":
                    self._take_receipts(message)
                    self.result = self.keep_final(message)
                    evaluation = self._released(number, self.result.get("eval") or {})
                    self.channel.send("final_eval", b"", round=number, eval=evaluation)
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

    def _restarted(self) -> bool:
        """Whether this participant ran in the task before (a mark in its state_dir, left there now)."""
        if self.state_dir is None or getattr(self.channel, "restartable", True) is False:  # (virtual participants)
            return False
        mark = Path(self.state_dir) / RUN_MARK
        try:
            if mark.exists():
                return True
            mark.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            mark.write_text(f"{self.channel.task}\n")
        except OSError as exc:
            log.warning("cannot keep the run mark in %s: %s", self.state_dir, exc)
        return False

    def _send_again(self, message, number: int) -> None:
        """Answer a round asked again with the update already made for it: the same bytes, or, where the
        privacy mode says they no longer fit the round, the same update encoded anew (and published)."""
        _, payload, header = self._last_update
        if payload is None:  # a large update, kept on disk only (``_keep_update``)
            stored = self._stored_update(quiet=True)
            if stored is None or stored[0] != number:
                raise RuntimeError(f"the update of round {number + 1} kept in {self.state_dir} cannot be read "
                                   "back; it cannot be sent again")
            payload = stored[1]
        fresh = self.encoding.encode_again(message, payload, header)
        if fresh is not None:
            payload, header = fresh
            self._keep_update(number, payload, header)
        if fresh is not None or not self._on_ledger(number, payload):  # (kept, then killed before publishing)
            hint = self._publish_metadata(number, payload, header, header.get("eval") or {})
        else:
            hint = {}
        self.channel.send("update", payload, round=number, **header, **hint)
        self.progress.message(f"round {number + 1}: update sent again ({len(payload)} bytes)")
        if fresh is not None and not self._relayed:
            self._audit_ledger()

    def _on_ledger(self, number: int, payload: bytes) -> bool:
        if not getattr(self.channel, "ledger_enabled", False):
            return True
        entry = self.channel.published_update(self.channel.name, number) or {}
        return entry.get("sha256") == hashlib.sha256(payload).hexdigest()

    def _keep_update(self, number: int, payload: bytes, header: dict, sha256: str | None = None) -> None:
        """Remember the update (in state_dir too, before anything of it leaves this machine). A large one
        kept on disk is read back from there if it is asked for again, not held in memory meanwhile.
        ``sha256``: the payload's, where the caller has it already."""
        self._last_update = (number, bytes(payload), dict(header))
        if self.state_dir is None or getattr(self.channel, "restartable", True) is False:
            return
        folder = Path(self.state_dir)
        in_one_file = len(payload) < min(KEEP_IN_ONE_FILE_BELOW, KEEP_IN_MEMORY_BELOW)
        record = {"format": 1, "task": self.channel.task, "round": number, "header": header,
                  "sha256": sha256 or hashlib.sha256(payload).hexdigest()}
        if in_one_file:
            record["payload_b64"] = base64.b64encode(payload).decode("ascii")
        try:  # serialized once: what cannot be kept is known before anything is written
            text = json_bytes(record)
        except (TypeError, ValueError) as exc:
            log.warning("round %s: the update's header cannot be kept in %s: %s", number, folder, exc)
            return
        if in_one_file:
            write_private(folder / f"{LAST_UPDATE}.json", text)
            (folder / f"{LAST_UPDATE}.bin").unlink(missing_ok=True)  # (a larger round's: the .json says which counts)
            return
        write_private(folder / f"{LAST_UPDATE}.bin", bytes(payload))
        write_private(folder / f"{LAST_UPDATE}.json", text)
        if len(payload) >= KEEP_IN_MEMORY_BELOW:
            self._last_update = (number, None, dict(header))

    def _stored_update(self, quiet: bool = False) -> tuple | None:
        """The last update kept in state_dir (by this run, or an earlier one of this participant), if
        its bytes are whole."""
        folder = Path(self.state_dir)
        try:
            kept = read_json(folder / f"{LAST_UPDATE}.json")
            if kept and isinstance(kept.get("payload_b64"), str):  # a small update, kept in the .json itself
                payload = base64.b64decode(kept["payload_b64"], validate=True)
            else:
                payload = (folder / f"{LAST_UPDATE}.bin").read_bytes() if kept else None
        except (StateFileError, OSError, binascii.Error) as exc:
            log.warning("the last update kept in %s cannot be read: %s", folder, exc)
            return None
        if (not kept or kept.get("task") != self.channel.task or not isinstance(kept.get("round"), int)
                or hashlib.sha256(payload).hexdigest() != kept.get("sha256")):
            return None  # the bytes were not written whole: they never left this machine
        if not quiet:
            self.progress.message(f"task {self.channel.task}: kept the update of round {kept['round'] + 1} "
                                  "from before the restart; it is sent again if that round is asked again")
        return kept["round"], payload, dict(kept.get("header") or {})

    def _same_setup(self, message) -> bool:
        return self._setup_key is not None and self._setup_key == _setup_digest(message)

    def _released(self, number: int, evaluation: dict) -> dict:
        """The test metrics that leave this machine: all of them, or none in a task with DP (shown here only)."""
        if not self.definition.get("dp"):
            return evaluation
        if evaluation:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(evaluation.items())
                              if k in ("accuracy", "loss", "rmse", "mae") and isinstance(v, (int, float)))
            self.progress.message(f"the global model after {number} round(s): own test figures, kept here under DP: "
                                  f"{shown or 'none'}")
        return {}

    def _publish_metadata(self, number: int, payload: bytes, header: dict, evaluation: dict,
                          sha256: str | None = None) -> dict:
        """Metadata before the model (Fujitsu): the update's sha256, sample count and local
        validation metrics (none under DP; the DP-SGD steps instead) go on the ledger before the
        update itself is sent. Returns the header field that tells the aggregator where the entry is
        (``ledger_seq``: it reads the ledger only when it has not read that far), or nothing."""
        if getattr(self.channel, "ledger_enabled", False):
            entry = {"round": number, "sha256": sha256 or hashlib.sha256(payload).hexdigest(), "size": len(payload),
                     "n_samples": header.get("n_samples"), "train_loss": _json_safe(header.get("train_loss")),
                     "validation": _json_safe(evaluation)}
            if isinstance(header.get("dp"), dict):
                entry["dp"] = _json_safe({**header["dp"], "epsilon_spent": header.get("epsilon_spent"),
                                          "neighbouring_relation": header.get("neighbouring_relation")})
            if self._relayed:  # the signed statement rides on the update; the aggregator appends it
                return self.channel.statement_for_update("update_submitted", entry)
            return {"ledger_seq": self.channel.publish_entry("update_submitted", entry)["seq"]}
        return {}

    @property
    def _relayed(self) -> bool:
        """Whether this participant's statements ride on its updates (``client/ledger_relay.py``) instead of
        being appended and audited by it directly."""
        return getattr(self.channel, "ledger_enabled", False) and hasattr(self.channel, "statement_for_update")

    def _take_receipts(self, message) -> None:
        """The proofs that the statements sent with the last updates are on the log (riding on this broadcast;
        what they do not settle, this participant settles with the platform directly)."""
        if self._relayed:
            try:
                checked = self.channel.take_receipts(message.get("ledger_receipts"))
            except Exception as exc:
                raise TaskEnded(f"ledger check failed in task {self.channel.task}: {exc}") from exc
            if checked:
                log.info("ledger: checkpoint %s verified and cosigned (%s own entries included%s)", checked["size"],
                         checked["own_entries"], ", proven by the relayed receipts" if checked.get("relayed") else "")

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


def _setup_digest(message) -> str:
    header = {k: v for k, v in message.header.items() if k not in ("round", "task", "kind", "size", "sha256")}
    text = json.dumps(header, sort_keys=True, default=str)
    return hashlib.sha256(hashlib.sha256(bytes(message.payload)).digest() + text.encode()).hexdigest()


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
