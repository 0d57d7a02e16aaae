"""POM 2, secure aggregation, as a layer around an inner aggregation (``SecureAggregation``) and the
participant's encoding of its update (``SecureAggregationParticipant``).

The round (Bonawitz et al. 2017, staged as Flower's SecAgg+; the core is ``secagg_*``):
``secagg_setup`` -> signed key announcements, ``secagg_share`` -> encrypted Shamir shares, routed
to each recipient with the round broadcast (or as ``secagg_delivery`` messages for a large
roster), ``round`` -> masked update, ``secagg_check`` -> each survivor's signature on its view of the round
(the consistency check), ``secagg_unmask`` -> the shares that remove the masks, released only
against ``threshold`` signatures on the same view. Keys and seeds are fresh in every round.
Participants check each round's roster and threshold against the task: everyone on the roster
joined (the ledger's ``joined`` entries), and the threshold is at least the task's
(``task_threshold``). Sample counts are sent in the clear, as the core's README says.
From the second round on, the first two stages travel with the previous round's broadcast, updates
and unmask exchange, so that a round costs two extra exchanges (the consistency check and the
unmasking), not four. What is masked and what
the inner layer gets: ``private_sum.py``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np

from werkbund.algorithms.engine.errors import TaskFailure
from werkbund.algorithms.engine.state_files import read_json, write_json
from werkbund.algorithms.privacy.wire import (
    PomError, from_header, own_identity, registered_identity_keys, to_header, vector_bytes, vector_from,
)
from werkbund.algorithms.privacy.private_sum import PrivateSumAggregation, PrivateSumParticipant, own_field, rejecting
from werkbund.algorithms.privacy.secagg.config import SecAggConfig, min_threshold
from werkbund.algorithms.privacy.secagg.errors import SecAggConsistencyError, SecAggError, SecAggRosterError
from werkbund.algorithms.privacy.secagg.participant import SecAggParticipant
from werkbund.algorithms.privacy.secagg.server import SecAggServer

log = logging.getLogger("werkbund.pom")

DELIVERIES_WITH_BROADCAST = 256 * 1024  # JSON bytes of all shares up to which they ride on the round broadcast
SIGNED_FILE = "secagg-signed.json"  # in the participant's state_dir: the survivors it signed, by round
POM2_FIELDS = ("weight", "clipped", "masked_with", "secagg_next_keys")  # what encoding adds to an update's header


def masked_with(commitment: bytes) -> str:
    """Names the keys an update was masked under (from the announced self-mask commitment), so that bytes
    masked in an earlier attempt at a round are told apart from the round's own."""
    return hashlib.sha256(bytes(commitment)).hexdigest()[:32]


def task_threshold(options: dict, members: list[str]) -> int:
    """The task's secure-aggregation threshold: ``pom_options.threshold``, and at least a majority of
    the participants that joined, however many are left in a round (so an aggregator cannot lower it
    by calling participants dropped)."""
    return max(int(options.get("threshold") or 0), min_threshold(len(members)))


def check_roster(setup: dict, members: list[str], options: dict) -> None:
    """Refuse a round whose roster names someone who did not join, or whose threshold is below the task's."""
    roster = setup.get("participants")
    if not isinstance(roster, list) or not all(isinstance(p, str) for p in roster):
        raise SecAggRosterError("the secure-aggregation setup carries no list of participants")
    strangers = sorted(set(roster) - set(members))
    if strangers:
        raise SecAggRosterError(f"the secure-aggregation roster names {', '.join(map(repr, strangers))}, who did "
                                f"not join the task (the ledger lists {', '.join(members) or 'nobody'})")
    wanted, threshold = task_threshold(options, members), setup.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < wanted:
        raise SecAggRosterError(
            f"the secure-aggregation threshold {threshold!r} is below the task's {wanted} (pom_options.threshold "
            f"{options.get('threshold')}, at least a majority of the {len(members)} that joined)")


class SecureAggregation(PrivateSumAggregation):
    """POM 2 on the aggregator: runs the SecAgg stages, unmasks only the sum, passes on its mean.

    From the second round on, a round's key stages ride on the previous round's messages instead of
    two exchanges of their own: the round broadcast carries the next round's set-up, every update
    carries its sender's signed announcement for the next round, and the unmask request carries the
    next round's key broadcast, answered together with the encrypted shares for the next round.
    A round for which not every active participant advertised and shared its keys that way
    (someone dropped out or was refused, or the task resumed from a checkpoint) runs the two key
    stages as exchanges first, as the first round does. Keys stay fresh in every round.
    """

    privacy_mode = 2

    def __init__(self, inner, aggregator):
        super().__init__(inner, aggregator)
        self.server: SecAggServer | None = None
        self._next: SecAggServer | None = None  # the following round's keys, gathered during this one
        self._members: list[str] | None = None  # who joined, from the ledger

    def setup(self) -> None:
        try:  # fail before any training if a participant cannot sign its key announcements
            registered_identity_keys(self.channel, sorted(self.agg.active), self._keys)
        except PomError as exc:
            raise TaskFailure(f"secure aggregation (POM 2) cannot start: {exc}") from None
        super().setup()

    def _threshold(self, n: int, number: int) -> int:
        wanted = self.options.get("threshold")
        if self._members is None:
            self._members = self.channel.joined_members()
        t = task_threshold(self.options, self._members)
        if n < 2 or t > n:
            raise TaskFailure(f"round {number}: secure aggregation needs at least {max(t, 2)} participants "
                              f"(threshold t > n/2{f', pom_options.threshold {wanted}' if wanted else ''}), "
                              f"but only {n} are left: {', '.join(self.agg.active) or 'none'}")
        return t

    def _new_server(self, number: int, roster: list[str]) -> SecAggServer:
        config = SecAggConfig(round_id=f"{self.channel.task}/{number}", participants=tuple(roster),
                              threshold=self._threshold(len(roster), number),
                              vector_length=int(self._global_flat.size),
                              clip_range=float(self.options["clip_range"]),
                              max_weight=float(self.options["max_samples"]))
        return SecAggServer(config, registered_identity_keys(self.channel, roster, self._keys))

    def _key_stages(self, number: int) -> dict[str, str]:
        """Advertise and share keys as two exchanges; returns who was refused and why."""
        keys = self.agg.exchange("secagg_setup", expect="secagg_keys", number=number,
                                 setup=self.server.setup_message(), handler=rejecting(
                                     lambda m: self.server.receive_announcement(own_field(m, "announcement"))))
        shares = self.agg.exchange("secagg_share", expect="secagg_shares", number=number,
                                   broadcast=to_header(self.server.key_broadcast()), handler=rejecting(
                                       lambda m: self.server.receive_shares(own_field(m, "shares"))))
        return {**shares.rejected, **keys.rejected}

    def begin_round(self, number, global_weights):
        started = time.perf_counter()
        header = super().begin_round(number, global_weights)
        roster = sorted(self.agg.active)
        prepared, self._next = self._next, None
        pipelined = (prepared is not None and list(prepared.config.participants) == roster
                     and prepared.shared == roster and prepared.config.vector_length == self._global_flat.size)
        try:
            if pipelined:
                self.server, rejected = prepared, {}
            else:
                self.server = self._new_server(number, roster)
                rejected = self._key_stages(number)
            shares = self._deliver(number, self.server.share_deliveries())
        except SecAggError as exc:
            raise TaskFailure(f"round {number}: secure aggregation failed: {exc}") from None
        # a participant refused at a key stage is out of this round; the round record says why
        self._excluded = {p: f"secure aggregation: {why}" for p, why in rejected.items()}
        config = self.server.config
        self._dtype = config.encoder().dtype
        self._n = config.vector_length
        self.stats = {"threshold": config.threshold, "participants": len(roster), "bytes_in": 0, "clipped": {},
                      "keys_with_previous_round": pipelined, "key_stages_s": time.perf_counter() - started}
        return {**header, **shares, **self._prepare_next(number, roster)}

    def _deliver(self, number: int, deliveries: dict[str, dict]) -> dict:
        """Each participant's encrypted shares: with the round broadcast while they are small (every
        share is AES-GCM-encrypted to its recipient, so the others learn nothing from it), else one
        ``secagg_delivery`` message per recipient (the total grows with the square of the roster)."""
        encoded = {recipient: to_header(delivery) for recipient, delivery in deliveries.items()}
        if len(json.dumps(encoded)) <= DELIVERIES_WITH_BROADCAST:
            return {"secagg_deliveries": encoded}
        for recipient, delivery in encoded.items():
            self.channel.send(recipient, "secagg_delivery", round=number, delivery=delivery)
        return {}

    def _prepare_next(self, number: int, roster: list[str]) -> dict:
        """The next round's set-up, to go out with this round's broadcast ({} after the last round)."""
        if number + 1 >= self.agg.definition["rounds"]:
            return {}
        try:
            self._next = self._new_server(number + 1, roster)
        except (TaskFailure, SecAggError) as exc:  # the next round will say so with its own key stages
            log.info("round %d: the next round's keys are not prepared early: %s", number, exc)
            return {}
        return {"secagg_next": self._next.setup_message()}

    def accept(self, update) -> None:
        rejecting(self._take)(update)

    def _take(self, update) -> None:
        self._take_next(update, "secagg_next_keys", lambda nxt, value: nxt.receive_announcement(value))
        weight = self._n_samples(update)
        commitment = self.server.commitment(update.sender)
        if commitment is not None and update.get("masked_with") != masked_with(commitment):
            raise PomError(f"{update.sender}'s update was masked under other keys than the ones it announced for "
                           "this round (an earlier attempt at the round), so this round's shares cannot unmask it")
        clipped = update.get("clipped", 0)
        if isinstance(clipped, bool) or not isinstance(clipped, int) or not 0 <= clipped <= self._n:
            raise PomError(f"the update's count of clipped entries {clipped!r} is not an integer in [0, {self._n}]")
        masked = vector_from(update.payload, self._dtype, self._n)
        self.stats["bytes_in"] += len(update.payload)
        self.server.receive_masked_input({"stage": "masked_input", "round_id": self.server.config.round_id,
                                          "sender": update.sender, "weight": weight, "masked": masked})
        if clipped:
            self.stats["clipped"][update.sender] = clipped
            self.agg.progress.message(f"round {update.get('round')}: {update.sender} "
                                      f"clipped {clipped} weight changes to pom_options.clip_range "
                                      f"{float(self.options['clip_range']):g}")

    def _take_next(self, message, key: str, take) -> None:
        """Hand the next round's part of a message to its server; a refusal only costs the early keys."""
        if self._next is None or message.get(key) is None:
            return
        try:
            take(self._next, own_field(message, key))
        except (SecAggError, KeyError, TypeError, ValueError) as exc:
            log.warning("the next round's keys from %s were refused (%s); that round runs its own key stages",
                        message.sender, exc)

    def _take_unmask(self, message) -> None:
        self.server.receive_unmask(own_field(message, "shares"))
        self._take_next(message, "secagg_next_shares", lambda nxt, value: nxt.receive_shares(value))

    def end_round(self, number, collected) -> None:
        started = time.perf_counter()
        upcoming = {}
        if self._next is not None and self._next.advertised == list(self._next.config.participants):
            upcoming["secagg_next"] = to_header(self._next.key_broadcast())
        else:
            self._next = None
        try:
            check = self.server.consistency_request()
            self.agg.exchange("secagg_check", expect="secagg_signed", number=number,
                              request=to_header(check), handler=rejecting(
                                  lambda m: self.server.receive_consistency(own_field(m, "signature"))))
            checked = time.perf_counter()
            request = self.server.unmask_request()
            self.agg.exchange("secagg_unmask", expect="secagg_unmasked", number=number, request=to_header(request),
                              handler=rejecting(self._take_unmask), **upcoming)
            result = self.server.finalize()
        except SecAggError as exc:
            raise TaskFailure(f"round {number}: secure aggregation failed: {exc}") from None
        if result.dropped:
            self.agg.progress.message(f"round {number}: secure aggregation without "
                                      f"{', '.join(result.dropped)} (dropped before masking)")
        self.stats.update(survivors=list(result.survivors), dropped=list(result.dropped),
                          check_s=checked - started, unmask_s=time.perf_counter() - checked)
        collected.rejected.update(self._excluded)
        self._hand_over(number, result.weighted_sum, result.total_weight, result.survivors)
        self.inner.end_round(number, collected)


class SecureAggregationParticipant(PrivateSumParticipant):
    """POM 2 on the participant: fresh SecAgg state per round; only the masked vector leaves.

    It holds at most two rounds' states: the running round's, until its unmask request, and the
    next round's, made when the running round's broadcast brought its set-up (see SecureAggregation).
    """

    privacy_mode = 2
    kinds = frozenset({"secagg_setup", "secagg_share", "secagg_delivery", "secagg_check", "secagg_unmask"})

    def __init__(self, participant):
        super().__init__(participant)
        self.states: dict[int, SecAggParticipant] = {}
        self.deliveries: dict[int, dict] = {}
        self._keys_s = 0.0
        self._members: list[str] | None = None  # who joined, from the ledger (read once: joining ends at the start)
        self._change_kept: tuple | None = None  # (round, change, n): the update made for the round under way
        self._masked_by: tuple | None = None    # (round, the SecAggParticipant that masked it)
        self._signed: dict[str, list[str]] | None = None  # round -> the survivors signed (state_dir/SIGNED_FILE)

    def _signed_views(self) -> dict[str, list[str]]:
        """The survivors this participant signed in each round, kept in its state_dir across restarts."""
        if self._signed is None:
            path = self._signed_path()
            kept = read_json(path) if path is not None else None
            self._signed = dict((kept or {}).get("signed") or {})
        return self._signed

    def _signed_path(self) -> Path | None:
        folder = getattr(self.part, "state_dir", None)
        if folder is None or getattr(self.channel, "restartable", True) is False:
            return None
        return Path(folder) / SIGNED_FILE

    def _sign_view(self, number: int, state: SecAggParticipant, request: dict) -> dict:
        """The consistency signature, once per round and survivor set: a round run again (a resumed
        aggregator) gets a signature only on the survivors signed before, so two sums of one round are
        never over different participants (their difference would be someone's update)."""
        survivors = sorted(request.get("survivors") or []) if isinstance(request, dict) else []
        signed = self._signed_views()
        before = signed.get(str(number))
        if before is not None and before != survivors:
            raise SecAggConsistencyError(f"round {number}: this participant already signed that round's view with "
                                         f"survivors {before}; it signs no other survivors ({survivors}) for it")
        signature = state.check_consistency(request)
        if before is None:
            signed[str(number)] = survivors
            for old in sorted(signed, key=int)[:-8]:  # a redo is of the round under way: a few rounds suffice
                signed.pop(old)
            path = self._signed_path()
            if path is not None:
                write_json(path, {"format": 1, "task": self.channel.task, "signed": signed})
        return signature

    def handle(self, message) -> None:
        started = time.perf_counter()
        try:
            self._handle(message)
        finally:
            self._keys_s += time.perf_counter() - started

    def _start(self, number, setup: dict) -> dict:
        """Fresh keys for round ``number`` from its set-up; returns the signed announcement."""
        expected = f"{self.channel.task}/{number}"
        if not isinstance(setup, dict) or setup.get("round_id") != expected:
            raise PomError(f"the secure-aggregation setup names round "
                           f"{setup.get('round_id') if isinstance(setup, dict) else None!r}, expected {expected!r}")
        if (setup.get("clip_range") != float(self.options["clip_range"])
                or setup.get("max_weight") != float(self.options["max_samples"])):
            raise PomError("the secure-aggregation setup does not use the task's pom_options "
                           f"(clip_range {setup.get('clip_range')}, max_weight {setup.get('max_weight')})")
        if self._members is None:
            self._members = self.channel.joined_members()
        check_roster(setup, self._members, self.options)
        roster = list(setup.get("participants") or [])
        state = SecAggParticipant(setup, self.channel.name, own_identity(self.channel),
                                  registered_identity_keys(self.channel, roster, self._keys))
        for old in [r for r in self.states if r < number - 1 or r == number]:  # a resend replaces a round
            self.states.pop(old)
            self.deliveries.pop(old, None)
        self.states[number] = state
        return state.advertise_keys()

    def _handle(self, message) -> None:
        number = message.get("round")
        if message.kind == "secagg_setup":
            announcement = self._start(number, message.get("setup") or {})
            self.channel.send("secagg_keys", round=number, announcement=to_header(announcement))
            return
        state = self.states.get(number)
        if state is None:
            raise PomError(f"{message.kind} for round {number} without this round's secure-aggregation setup")
        if message.kind == "secagg_share":
            shares = state.share_keys(from_header(message.get("broadcast")))
            self.channel.send("secagg_shares", round=number, shares=to_header(shares))
        elif message.kind == "secagg_delivery":
            self.deliveries[number] = from_header(message.get("delivery"))
        elif message.kind == "secagg_check":  # the consistency check: sign the view of the round shown
            signature = self._sign_view(number, state, from_header(message.get("request")))
            self.channel.send("secagg_signed", round=number, signature=to_header(signature))
        elif message.kind == "secagg_unmask":
            shares = state.unmask(from_header(message.get("request")))
            self.states.pop(number)
            self.deliveries.pop(number, None)
            upcoming = {}
            if number + 1 in self.states and message.get("secagg_next") is not None:
                upcoming = self._early(number + 1, lambda: {"secagg_next_shares": to_header(
                    self.states[number + 1].share_keys(from_header(message.get("secagg_next"))))})
            self.channel.send("secagg_unmasked", round=number, shares=to_header(shares), **upcoming)

    def _report_clipping(self, number, change) -> int:
        """How many entries of the change lie outside ``pom_options.clip_range`` (the encoding clips
        them); said in this participant's log and progress, and sent to the aggregator in the clear
        with the update (``clipped``), which puts it in the round record."""
        limit = float(self.options["clip_range"])
        clipped = int(np.count_nonzero(np.abs(change) > limit))
        if clipped:
            text = (f"round {number}: {clipped} of {change.size} weight changes exceed pom_options.clip_range "
                    f"{limit:g} and are clipped to it in the secure aggregate (raise clip_range or lower "
                    "the learning rate)")
            log.warning(text)
            self.part.progress.message(text)
        return clipped

    def _early(self, number: int, step) -> dict:
        """The next round's key step, sent along with this round's message; a failure costs only the
        head start (the aggregator then runs that round's key stages as exchanges)."""
        try:
            return step()
        except (SecAggError, KeyError, TypeError, ValueError) as exc:
            log.warning("round %s: could not prepare the secure-aggregation keys early: %s", number, exc)
            self.states.pop(number, None)
            return {}

    def _round_keys(self, number, message) -> tuple[SecAggParticipant, dict]:
        state, delivery = self.states.get(number), self.deliveries.get(number)
        if delivery is None and isinstance(message.get("secagg_deliveries"), dict):
            delivery = message.get("secagg_deliveries").get(self.channel.name)
            delivery = from_header(delivery) if delivery is not None else None
        if state is None or delivery is None:
            if getattr(self.part, "restarted", False):
                raise PomError(f"round {number}: this participant was restarted and lost its secure-aggregation "
                               f"keys of round {number} (they live in memory only, never on disk); it takes part "
                               "again from the next round")
            raise PomError(f"round {number}: no secure-aggregation keys were shared with this participant")
        return state, delivery

    def encode(self, message, update, header) -> tuple[bytes, dict]:
        number = message.get("round")
        if str(number) in self._signed_views():
            raise PomError(f"round {number}: this participant signed that round's sum before it was restarted and "
                           "no longer has the update it masked then; it masks no other update for the round")
        state, delivery = self._round_keys(number, message)
        change, n = self._change(message, update, header)
        self._change_kept = (number, change, n)
        return self._mask(message, number, state, delivery, change, n, header)

    def encode_again(self, message, payload, header):
        """The round asked again: the bytes sent stand if the keys that masked them are the round's; if the
        aggregator ran the round again under new keys (it resumed), the same update is masked under them,
        never a newly trained one (the old bytes cannot be unmasked: every participant dropped the old keys
        and shares when the new set-up came)."""
        number = message.get("round")
        state = self.states.get(number)
        if state is None or (self._masked_by is not None and self._masked_by == (number, state)):
            return None
        if self._change_kept is None or self._change_kept[0] != number:
            raise PomError(f"round {number}: the aggregator runs this round again under new keys, and this "
                           "participant no longer has the update it masked for it (it was restarted); it masks "
                           "no other update for the round")
        _, delivery = self._round_keys(number, message)
        base = {k: v for k, v in header.items() if k not in POM2_FIELDS}
        fresh = self._mask(message, number, state, delivery, self._change_kept[1], self._change_kept[2], base)
        self.part.progress.message(f"round {number}: the aggregator ran this round again; the update made for it "
                                   "is masked again under the round's new keys (not trained again)")
        return fresh

    def _mask(self, message, number, state, delivery, change, n, header) -> tuple[bytes, dict]:
        started = time.perf_counter()
        clipped = self._report_clipping(number, change)
        masked = state.masked_input(delivery, change, n)
        self._masked_by = (number, state)
        body = vector_bytes(masked["masked"], masked["masked"].dtype)
        protect_s = time.perf_counter() - started
        header = dict(header, weight=n, clipped=clipped, masked_with=masked_with(state.commitment))
        if message.get("secagg_next") is not None:  # announce the next round's keys with this update
            started = time.perf_counter()
            header.update(self._early(number + 1, lambda: {"secagg_next_keys": to_header(
                self._start(number + 1, message.get("secagg_next")))}))
            self._keys_s += time.perf_counter() - started
        self.stats = {"protect_s": protect_s, "keys_s": self._keys_s, "bytes": len(body)}
        self._keys_s = 0.0
        return body, header
