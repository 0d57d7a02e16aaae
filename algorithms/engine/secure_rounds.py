"""Privacy operation modes in the round engine: POM 2 (secure aggregation) here, POM 3 in he_rounds.

The engine calls a mode at four points and stays otherwise unchanged. On the aggregator side:
``setup()`` after the algorithm's setup, ``before_round(n)`` before the round's broadcast,
``take_update(message)`` for each update (instead of the algorithm's ``accept_update``) and
``after_round(n, collected)`` after the collection. On the participant side: ``handle(message)``
for the mode's own message kinds, and ``protect(message, payload, header)`` on the update that
``train`` returned. The mode works on the model's weights as one flat vector: a participant
protects ``n_samples * (its weights - the global weights)``, the aggregator obtains only the sum
of these over the participants and the total sample count, and hands the algorithm one update:
the sample-weighted mean of the weights, with the total as its sample count. Any strategy that
needs only that mean (FedAvg, FedProx, the server optimizers over FedAvg) then works unchanged;
the platform refuses the others for POM 2 and 3 (``platform/definition.py``).

POM 2 round (Bonawitz et al. 2017, staged as Flower's SecAgg+; the core is
``algorithms/privacy/secagg_*``): ``secagg_setup`` -> signed key announcements,
``secagg_share`` -> encrypted Shamir shares, routed to each recipient with the round broadcast
(or as ``secagg_delivery`` messages for a large roster),
``round`` -> masked update, ``secagg_unmask`` -> the shares that remove the masks. Keys and
seeds are fresh in every round. Sample counts are sent in the clear, as the core's README says.
From the second round on, the first two stages travel with the previous round's broadcast, updates
and unmask exchange, so that a round costs one extra exchange, not three (``SecureAggregator``).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from werkbund.algorithms.arrays import UpdateRejected, decode_weights, encode_weights
from werkbund.algorithms.privacy.pom_wire import (
    PomError, flatten, from_header, own_identity, registered_identity_keys, to_header, unflatten, vector_bytes,
    vector_from,
)
from werkbund.algorithms.privacy.secagg_config import SecAggConfig, min_threshold
from werkbund.algorithms.privacy.secagg_errors import SecAggError
from werkbund.algorithms.privacy.secagg_participant import SecAggParticipant
from werkbund.algorithms.privacy.secagg_server import SecAggServer

log = logging.getLogger("werkbund.pom")

DEFAULT_CLIP_RANGE = 64.0          # |weight change| per round and entry; larger values are clipped
DEFAULT_MAX_SAMPLES = 1 << 20      # largest sample count (the weight of an update) a participant may have
DELIVERIES_WITH_BROADCAST = 256 * 1024  # JSON bytes of all shares up to which they ride on the round broadcast
MODES = {1: "plain", 2: "secure aggregation", 3: "homomorphic encryption (CKKS)"}


def pom_options(definition: dict) -> dict:
    options = dict(definition.get("pom_options") or {})
    options.setdefault("clip_range", DEFAULT_CLIP_RANGE)
    options.setdefault("max_samples", DEFAULT_MAX_SAMPLES)
    return options


def aggregator_mode(aggregator):
    """The aggregator side of the task's privacy mode, or None for POM 1."""
    pom = aggregator.definition.get("pom", 1)
    if pom == 2:
        return SecureAggregator(aggregator)
    if pom == 3:
        from werkbund.algorithms.engine.he_rounds import EncryptedAggregator

        return EncryptedAggregator(aggregator)
    return None


def participant_mode(participant):
    """The participant side of the task's privacy mode, or None for POM 1."""
    pom = participant.definition.get("pom", 1)
    if pom == 2:
        return SecureParticipant(participant)
    if pom == 3:
        from werkbund.algorithms.engine.he_rounds import EncryptedParticipant

        return EncryptedParticipant(participant)
    return None


@dataclass
class AggregateUpdate:
    """The one update a mode hands the algorithm: the weighted mean, looking like a task message."""

    payload: bytes
    header: dict
    sender: str = "aggregate"
    kind: str = "update"
    extra: dict = field(default_factory=dict)

    def get(self, key, default=None):
        return self.header.get(key, default)


def _rejecting(handler):
    """Run a stage handler; a protocol error refuses that participant's message."""
    def wrapped(message):
        try:
            handler(message)
        except (SecAggError, KeyError, TypeError, ValueError) as exc:
            raise UpdateRejected(str(exc)) from None
    return wrapped


def _own(message, key: str) -> dict:
    """A protocol dict from the header, which must name the participant the platform says sent it."""
    value = from_header(message.get(key))
    if not isinstance(value, dict) or value.get("sender") != message.sender:
        raise PomError(f"{message.sender!r} sent a {key} message in the name of "
                       f"{value.get('sender') if isinstance(value, dict) else None!r}")
    return value


class AggregatorMode:
    """Shared by POM 2 and 3: the global weights as a flat vector, and the mean handed back."""

    def __init__(self, aggregator):
        self.agg = aggregator
        self.channel = aggregator.channel
        self.options = pom_options(aggregator.definition)
        self._keys: dict = {}
        self.stats: dict = {}

    def setup(self) -> None:
        pass

    def take_update(self, message) -> None:
        raise NotImplementedError

    def round_record(self) -> dict:
        """What goes into the round's record: the mode and who took part (no timing)."""
        return {"mode": self.agg.definition["pom"],
                **{k: v for k, v in self.stats.items() if not k.endswith("_s") and not k.startswith("bytes")}}

    def _global(self) -> tuple[list[np.ndarray], np.ndarray]:
        try:
            weights = decode_weights(self.agg.global_payload()[0])
        except UpdateRejected as exc:
            from werkbund.algorithms.engine.aggregator import TaskFailure

            raise TaskFailure(f"POM {self.agg.definition['pom']} needs an algorithm whose model is a list of "
                              f"weight arrays: {exc}") from None
        return weights, flatten(weights)

    def _n_samples(self, message) -> int:
        n = message.get("n_samples")
        if not isinstance(n, int) or isinstance(n, bool) or not 0 < n <= self.options["max_samples"]:
            raise UpdateRejected(f"the update's sample count {n!r} is not an integer in "
                                 f"[1, {self.options['max_samples']}] (pom_options.max_samples)")
        return n

    def _check_header(self, message) -> None:
        """What the algorithm checks in each update's header besides the weights (the DP plan)."""
        dp = getattr(self.agg, "dp", None)
        if dp is not None:
            dp.record(message.sender, message)

    def _hand_over(self, number: int, weighted_sum: np.ndarray, total: float, contributors) -> None:
        """Give the algorithm the mean of the weights: global + weighted sum of changes / total."""
        from werkbund.algorithms.engine.aggregator import TaskFailure

        if total <= 0:
            raise TaskFailure(f"round {number}: the contributors' total sample count is zero")
        mean = self._global_flat + weighted_sum / float(total)
        weights = unflatten(mean, self._global_weights)
        message = AggregateUpdate(encode_weights(weights), {"round": number, "n_samples": int(round(total)),
                                                            "aggregate_of": sorted(contributors)},
                                  sender="+".join(sorted(contributors)))
        try:
            self.agg.accept_update(message)
        except UpdateRejected as exc:
            raise TaskFailure(f"round {number}: the aggregate of {', '.join(sorted(contributors))} "
                              f"was refused: {exc}") from None


class SecureAggregator(AggregatorMode):
    """POM 2 on the aggregator: runs the SecAgg stages and unmasks only the sum.

    From the second round on, a round's key stages ride on the previous round's messages instead of
    two exchanges of their own: the round broadcast carries the next round's set-up, every update
    carries its sender's signed announcement for the next round, and the unmask request carries the
    next round's key broadcast, answered together with the encrypted shares for the next round.
    A round for which not every active participant advertised and shared its keys that way
    (someone dropped out or was refused, or the task resumed from a checkpoint) runs the two key
    stages as exchanges first, as the first round does. Keys stay fresh in every round.
    """

    def __init__(self, aggregator):
        super().__init__(aggregator)
        self.server: SecAggServer | None = None
        self._next: SecAggServer | None = None  # the following round's keys, gathered during this one

    def setup(self) -> None:
        from werkbund.algorithms.engine.aggregator import TaskFailure

        try:  # fail before any training if a participant cannot sign its key announcements
            registered_identity_keys(self.channel, sorted(self.agg.active), self._keys)
        except PomError as exc:
            raise TaskFailure(f"secure aggregation (POM 2) cannot start: {exc}") from None

    def _threshold(self, n: int, number: int) -> int:
        from werkbund.algorithms.engine.aggregator import TaskFailure

        wanted = self.options.get("threshold")
        t = max(int(wanted or 0), min_threshold(n))
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
                                 setup=self.server.setup_message(), handler=_rejecting(
                                     lambda m: self.server.receive_announcement(_own(m, "announcement"))))
        shares = self.agg.exchange("secagg_share", expect="secagg_shares", number=number,
                                   broadcast=to_header(self.server.key_broadcast()), handler=_rejecting(
                                       lambda m: self.server.receive_shares(_own(m, "shares"))))
        return {**shares.rejected, **keys.rejected}

    def before_round(self, number: int) -> dict:
        from werkbund.algorithms.engine.aggregator import TaskFailure

        started = time.perf_counter()
        self._global_weights, self._global_flat = self._global()
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
        self.stats = {"threshold": config.threshold, "participants": len(roster), "bytes_in": 0,
                      "keys_with_previous_round": pipelined, "key_stages_s": time.perf_counter() - started}
        return {**shares, **self._prepare_next(number, roster)}

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
        from werkbund.algorithms.engine.aggregator import TaskFailure

        if number + 1 >= self.agg.definition["rounds"]:
            return {}
        try:
            self._next = self._new_server(number + 1, roster)
        except (TaskFailure, SecAggError) as exc:  # the next round will say so with its own key stages
            log.info("round %d: the next round's keys are not prepared early: %s", number, exc)
            return {}
        return {"secagg_next": self._next.setup_message()}

    def take_update(self, message) -> None:
        _rejecting(self._take)(message)

    def _take(self, message) -> None:
        self._take_next(message, "secagg_next_keys", lambda nxt, value: nxt.receive_announcement(value))
        weight = self._n_samples(message)
        masked = vector_from(message.payload, self._dtype, self._n)
        self._check_header(message)
        self.stats["bytes_in"] += len(message.payload)
        self.server.receive_masked_input({"stage": "masked_input", "round_id": self.server.config.round_id,
                                          "sender": message.sender, "weight": weight, "masked": masked})

    def _take_next(self, message, key: str, take) -> None:
        """Hand the next round's part of a message to its server; a refusal only costs the early keys."""
        if self._next is None or message.get(key) is None:
            return
        try:
            take(self._next, _own(message, key))
        except (SecAggError, KeyError, TypeError, ValueError) as exc:
            log.warning("the next round's keys from %s were refused (%s); that round runs its own key stages",
                        message.sender, exc)

    def _take_unmask(self, message) -> None:
        self.server.receive_unmask(_own(message, "shares"))
        self._take_next(message, "secagg_next_shares", lambda nxt, value: nxt.receive_shares(value))

    def after_round(self, number: int, collected) -> None:
        from werkbund.algorithms.engine.aggregator import TaskFailure

        started = time.perf_counter()
        upcoming = {}
        if self._next is not None and self._next.advertised == list(self._next.config.participants):
            upcoming["secagg_next"] = to_header(self._next.key_broadcast())
        else:
            self._next = None
        try:
            request = self.server.unmask_request()
            self.agg.exchange("secagg_unmask", expect="secagg_unmasked", number=number, request=to_header(request),
                              handler=_rejecting(self._take_unmask), **upcoming)
            result = self.server.finalize()
        except SecAggError as exc:
            raise TaskFailure(f"round {number}: secure aggregation failed: {exc}") from None
        if result.dropped:
            self.agg.progress.message(f"round {number}: secure aggregation without "
                                      f"{', '.join(result.dropped)} (dropped before masking)")
        self.stats.update(survivors=list(result.survivors), dropped=list(result.dropped),
                          unmask_s=time.perf_counter() - started)
        collected.rejected.update(self._excluded)
        self._hand_over(number, result.weighted_sum, result.total_weight, result.survivors)


class ParticipantMode:
    """Shared by POM 2 and 3 on the participant side."""

    kinds: frozenset = frozenset()

    def __init__(self, participant):
        self.part = participant
        self.channel = participant.channel
        self.options = pom_options(participant.definition)
        self._keys: dict = {}
        self.stats: dict = {}

    def _change(self, message, payload: bytes, header: dict) -> tuple[np.ndarray, int]:
        """``(weights - global weights)`` as a flat vector, and the update's sample count."""
        n = header.get("n_samples")
        if not isinstance(n, int) or n <= 0:
            raise PomError(f"the update's sample count {n!r} is not a positive integer")
        if n > self.options["max_samples"]:
            raise PomError(f"this participant has {n} training rows, more than the task's "
                           f"pom_options.max_samples ({self.options['max_samples']})")
        return flatten(decode_weights(payload)) - flatten(decode_weights(message.payload)), n


class SecureParticipant(ParticipantMode):
    """POM 2 on the participant: fresh SecAgg state per round; only the masked vector leaves.

    It holds at most two rounds' states: the running round's, until its unmask request, and the
    next round's, made when the running round's broadcast brought its set-up (see SecureAggregator).
    """

    kinds = frozenset({"secagg_setup", "secagg_share", "secagg_delivery", "secagg_unmask"})

    def __init__(self, participant):
        super().__init__(participant)
        self.states: dict[int, SecAggParticipant] = {}
        self.deliveries: dict[int, dict] = {}
        self._keys_s = 0.0

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
        elif message.kind == "secagg_unmask":
            shares = state.unmask(from_header(message.get("request")))
            self.states.pop(number)
            self.deliveries.pop(number, None)
            upcoming = {}
            if number + 1 in self.states and message.get("secagg_next") is not None:
                upcoming = self._early(number + 1, lambda: {"secagg_next_shares": to_header(
                    self.states[number + 1].share_keys(from_header(message.get("secagg_next"))))})
            self.channel.send("secagg_unmasked", round=number, shares=to_header(shares), **upcoming)

    def _early(self, number: int, step) -> dict:
        """The next round's key step, sent along with this round's message; a failure costs only the
        head start (the aggregator then runs that round's key stages as exchanges)."""
        try:
            return step()
        except (SecAggError, KeyError, TypeError, ValueError) as exc:
            log.warning("round %s: could not prepare the secure-aggregation keys early: %s", number, exc)
            self.states.pop(number, None)
            return {}

    def protect(self, message, payload: bytes, header: dict) -> tuple[bytes, dict]:
        number = message.get("round")
        state, delivery = self.states.get(number), self.deliveries.get(number)
        if delivery is None and isinstance(message.get("secagg_deliveries"), dict):
            delivery = message.get("secagg_deliveries").get(self.channel.name)
            delivery = from_header(delivery) if delivery is not None else None
        if state is None or delivery is None:
            raise PomError(f"round {number}: no secure-aggregation keys were shared with this participant")
        started = time.perf_counter()
        change, n = self._change(message, payload, header)
        masked = state.masked_input(delivery, change, n)
        body = vector_bytes(masked["masked"], masked["masked"].dtype)
        protect_s = time.perf_counter() - started
        header = dict(header, weight=n)
        if message.get("secagg_next") is not None:  # announce the next round's keys with this update
            started = time.perf_counter()
            header.update(self._early(number + 1, lambda: {"secagg_next_keys": to_header(
                self._start(number + 1, message.get("secagg_next")))}))
            self._keys_s += time.perf_counter() - started
        self.stats = {"protect_s": protect_s, "keys_s": self._keys_s, "bytes": len(body)}
        self._keys_s = 0.0
        return body, header
