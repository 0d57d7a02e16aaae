"""How a round's updates reach the algorithm: the small protocol that every aggregation layer implements.

The round engine turns each update into the next global model through a stack of layers that all
follow ``UpdateAggregation``, built once per task by ``aggregation_stack.build_aggregation``. A
wrapper (``AggregationWrapper``) holds the next layer in ``inner`` and passes on what it does not
change, as the strategies' wrappers do (``strategies/wrapper.py``): the DP accounting checks each
update and passes it on; POM 2 and 3 take the protected updates and pass on one update, their
sample-weighted mean. The innermost layer, ``AlgorithmUpdates``, hands what arrives to the
algorithm's ``accept_update``.

The contract of an algorithm "whose update is a weighted sum of arrays" (what POM 2 and 3 need):
its aggregator sets ``weighted_mean_update = True`` and returns the round's arrays from
``global_weights()``; the engine encodes them for the broadcast (``global_payload``), decodes every
update once against their shapes and dtypes (finite values only) and hands the algorithm an
``Update`` with ``weights`` (the arrays) and ``n_samples``. Under POM 2 and 3 it is given exactly
one update per round, the sample-weighted mean, with the total sample count, so it must need no
more than that mean (FedAvg, FedProx, a server optimizer over them; the robust strategies need
every update and run under POM 1 only). Its participant's ``train`` returns the arrays (same
shapes and dtypes) and a header with ``n_samples``; the engine encodes them, plainly or protected
(``UpdateEncoding``), and the ledger entry hashes the very bytes that are sent.

Participant side: ``UpdateEncoding`` turns what ``train`` returned into the bytes on the wire
(``PlainEncoding``: safetensors) and handles the message kinds of a privacy mode's own exchanges.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from werkbund.algorithms.arrays import check_weights, decode_weights, encode_weights, sample_count, signature


@dataclass
class Update:
    """One update as the layers see it: like a task message (``sender``, ``header``, ``get``,
    ``payload``: the bytes as they arrived) plus its arrays once decoded (``weights``)."""

    sender: str
    header: dict
    payload: bytes = b""
    weights: list[np.ndarray] | None = None

    @classmethod
    def of(cls, message) -> "Update":
        return cls(message.sender, dict(message.header), message.payload)

    def get(self, key, default=None):
        return self.header.get(key, default)

    @property
    def n_samples(self):
        return self.header.get("n_samples")


class UpdateAggregation:
    """One layer of the aggregator's stack. A layer that wraps another derives from ``AggregationWrapper``."""

    privacy_mode: int | None = None  # 2 or 3 for the layer of a privacy operation mode

    def setup(self) -> None:
        """Once per run, after the algorithm's ``setup`` (or ``restore_state`` on a resume)."""

    def begin_round(self, number: int, global_weights: list[np.ndarray] | None) -> dict:
        """Before the round's broadcast, with the arrays it carries (None for an algorithm without the
        weighted-mean contract); returns header fields to send with the broadcast."""
        return {}

    def accept(self, update: Update) -> None:
        """One participant's update, its bytes already checked against the ledger; UpdateRejected refuses it."""
        raise NotImplementedError

    def end_round(self, number: int, collected) -> None:
        """After the round's updates were collected (``collected``: the engine's ``Collected``)."""

    def round_record(self, number: int) -> dict:
        """Entries for the round's record (e.g. ``pom``, ``dp``)."""
        return {}

    def checkpoint_state(self) -> dict:
        """JSON-able state the aggregator's checkpoint keeps for a resume (POM 3: its context without keys)."""
        return {}

    def restore_checkpoint(self, state: dict) -> None:
        """Take back what ``checkpoint_state`` gave, on a resume (before ``setup``)."""

    def layer(self, privacy_mode: int | None = None):
        """The first layer from here inwards that belongs to a privacy mode (any, or that one), or None."""
        layer = self
        while layer is not None:
            if layer.privacy_mode is not None and privacy_mode in (None, layer.privacy_mode):
                return layer
            layer = getattr(layer, "inner", None)
        return None


class AggregationWrapper(UpdateAggregation):
    """A layer around an inner one; everything it does not override goes through unchanged."""

    def __init__(self, inner: UpdateAggregation, aggregator):
        if not isinstance(inner, UpdateAggregation):
            raise TypeError(f"{type(self).__name__} wraps an UpdateAggregation, not {type(inner).__name__}")
        self.inner = inner
        self.agg = aggregator

    def setup(self) -> None:
        self.inner.setup()

    def begin_round(self, number, global_weights):
        return self.inner.begin_round(number, global_weights)

    def accept(self, update):
        self.inner.accept(update)

    def end_round(self, number, collected):
        self.inner.end_round(number, collected)

    def round_record(self, number):
        return self.inner.round_record(number)

    def checkpoint_state(self):
        return self.inner.checkpoint_state()

    def restore_checkpoint(self, state):
        self.inner.restore_checkpoint(state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(inner={self.inner!r})"


class AlgorithmUpdates(UpdateAggregation):
    """The innermost layer: the algorithm's ``accept_update``.

    For an algorithm with the weighted-mean contract the engine decodes each update here, once,
    against the shapes and dtypes of the round's global weights, and checks its sample count; an
    update that a privacy layer already holds as arrays (their mean) is checked the same way.
    Other algorithms get the update as it arrived and decode it themselves."""

    def __init__(self, aggregator):
        self.agg = aggregator
        self.expected = None

    def begin_round(self, number, global_weights):
        self.expected = None if global_weights is None else signature(global_weights)
        return {}

    def accept(self, update):
        if self.expected is not None:
            if update.weights is None:
                update.weights = decode_weights(update.payload, self.expected)
            else:
                check_weights(update.weights, self.expected)
            sample_count(update)
        self.agg.accept_update(update)

    def __repr__(self) -> str:
        return f"AlgorithmUpdates({type(self.agg).__name__})"


# ------------------------------------------------------------------------------ participant side
class UpdateEncoding:
    """The participant's side: the bytes an update travels as, and a privacy mode's own messages."""

    privacy_mode = 1
    kinds: frozenset = frozenset()  # message kinds handed to ``handle``
    reads_round_model = True  # ``encode`` reads the round's global model from its message (POM 2 and 3)

    def __init__(self, participant):
        self.part = participant
        self.channel = participant.channel
        self.stats: dict = {}

    def handle(self, message) -> None:
        raise NotImplementedError(f"{type(self).__name__} handles no messages of its own")

    def encode(self, message, update, header: dict) -> tuple[bytes, dict]:
        """What ``train`` returned for the round ``message`` -> (the payload to send, its header)."""
        raise NotImplementedError

    def encode_again(self, message, payload: bytes, header: dict) -> tuple[bytes, dict] | None:
        """The round ``message`` is asked again and this participant already sent ``payload`` (with
        ``header``) for it: None to send the same bytes again (the default), or the same update encoded
        anew when the bytes no longer fit the round (POM 2 under keys made again)."""
        return None


class PlainEncoding(UpdateEncoding):
    """POM 1: the arrays as safetensors (an algorithm that made its own payload bytes sends them as they are)."""

    reads_round_model = False

    def encode(self, message, update, header):
        payload = bytes(update) if isinstance(update, (bytes, bytearray, memoryview)) else encode_weights(update)
        self.stats = {"bytes": len(payload)}
        return payload, header


def arrays_of(update, what: str) -> list[np.ndarray]:
    """``update`` as a list of NumPy arrays, or TypeError naming what needed them."""
    if isinstance(update, (bytes, bytearray, memoryview)) or not isinstance(update, (list, tuple)):
        raise TypeError(f"{what} needs the update as a list of arrays (train returned {type(update).__name__})")
    return [np.asarray(w) for w in update]
