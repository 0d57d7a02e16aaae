"""What POM 2 and POM 3 share: a sample-weighted sum of updates that the aggregator never sees one by one.

Both modes wrap an inner aggregation (``engine/update_aggregation.py``) and work on the model's
arrays as one flat vector. A participant protects ``n_samples * (its arrays - the global arrays)``
(the change, not the arrays, so that ``clip_range`` can stay small); the aggregator obtains only
the sum of these over the participants and the total sample count, and passes the inner layer one
update: the sample-weighted mean of the arrays, ``global + sum / total``, with the total as its
sample count. So they apply to any algorithm whose update is a weighted sum of arrays (its
aggregator sets ``weighted_mean_update``), and any strategy that needs only that mean (FedAvg,
FedProx, the server optimizers over FedAvg) works unchanged; the others are refused when the task
is created.
"""
from __future__ import annotations

import numpy as np

from werkbund.algorithms.arrays import UpdateRejected
from werkbund.algorithms.engine.errors import TaskFailure
from werkbund.algorithms.engine.update_aggregation import AggregationWrapper, Update, UpdateEncoding, arrays_of
from werkbund.algorithms.privacy.wire import PomError, flatten, from_header, unflatten
from werkbund.algorithms.privacy.secagg.errors import SecAggError

DEFAULT_CLIP_RANGE = 64.0          # |weight change| per round and entry; larger values are clipped
DEFAULT_MAX_SAMPLES = 1 << 20      # largest sample count (the weight of an update) a participant may have
MODES = {1: "plain", 2: "secure aggregation", 3: "homomorphic encryption (CKKS)"}


def pom_options(definition: dict) -> dict:
    options = dict(definition.get("pom_options") or {})
    options.setdefault("clip_range", DEFAULT_CLIP_RANGE)
    options.setdefault("max_samples", DEFAULT_MAX_SAMPLES)
    return options


def rejecting(handler):
    """Run a stage handler; a protocol error refuses that participant's message."""
    def wrapped(message):
        try:
            handler(message)
        except (SecAggError, KeyError, TypeError, ValueError) as exc:
            raise UpdateRejected(str(exc)) from None
    return wrapped


def own_field(message, key: str) -> dict:
    """A protocol dict from the header, which must name the participant the platform says sent it."""
    value = from_header(message.get(key))
    if not isinstance(value, dict) or value.get("sender") != message.sender:
        raise PomError(f"{message.sender!r} sent a {key} message in the name of "
                       f"{value.get('sender') if isinstance(value, dict) else None!r}")
    return value


class PrivateSumAggregation(AggregationWrapper):
    """The aggregator's half shared by POM 2 and 3: the global arrays as a flat vector, the mean handed on."""

    def __init__(self, inner, aggregator):
        super().__init__(inner, aggregator)
        self.channel = aggregator.channel
        self.options = pom_options(aggregator.definition)
        self._keys: dict = {}
        self.stats: dict = {}

    def setup(self) -> None:
        if not getattr(self.agg, "weighted_mean_update", False):
            raise TaskFailure(f"POM {self.privacy_mode} ({MODES[self.privacy_mode]}) needs an algorithm whose update "
                              f"is a weighted sum of arrays (an aggregator with weighted_mean_update = True); "
                              f"{type(self.agg).__name__} is not one")
        self.inner.setup()

    def begin_round(self, number, global_weights):
        if global_weights is None:
            raise TaskFailure(f"round {number}: POM {self.privacy_mode} needs the round's global weights as arrays")
        self._global_weights, self._global_flat = global_weights, flatten(global_weights)
        return self.inner.begin_round(number, global_weights)

    def round_record(self, number):
        """The inner layers' entries and ``pom``: the mode and who took part (no timing)."""
        own = {k: v for k, v in self.stats.items() if not k.endswith("_s") and not k.startswith("bytes")}
        return {**self.inner.round_record(number), "pom": {"mode": self.privacy_mode, **own}}

    def _n_samples(self, message) -> int:
        n = message.get("n_samples")
        if not isinstance(n, int) or isinstance(n, bool) or not 0 < n <= self.options["max_samples"]:
            raise UpdateRejected(f"the update's sample count {n!r} is not an integer in "
                                 f"[1, {self.options['max_samples']}] (pom_options.max_samples)")
        return n

    def _hand_over(self, number: int, weighted_sum: np.ndarray, total: float, contributors) -> None:
        """Pass the inner layer the mean of the arrays: global + weighted sum of changes / total."""
        if total <= 0:
            raise TaskFailure(f"round {number}: the contributors' total sample count is zero")
        mean = unflatten(self._global_flat + weighted_sum / float(total), self._global_weights)
        names = sorted(contributors)
        update = Update("+".join(names), {"round": number, "n_samples": int(round(total)), "aggregate_of": names},
                        weights=mean)
        try:
            self.inner.accept(update)
        except UpdateRejected as exc:
            raise TaskFailure(f"round {number}: the aggregate of {', '.join(names)} was refused: {exc}") from None


class PrivateSumParticipant(UpdateEncoding):
    """The participant's half shared by POM 2 and 3."""

    def __init__(self, participant):
        super().__init__(participant)
        self.options = pom_options(participant.definition)
        self._keys: dict = {}

    def _change(self, message, update, header: dict) -> tuple[np.ndarray, int]:
        """``(arrays - the round's global arrays)`` as a flat vector, and the update's sample count."""
        n = header.get("n_samples")
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            raise PomError(f"the update's sample count {n!r} is not a positive integer")
        if n > self.options["max_samples"]:
            raise PomError(f"this participant has {n} training rows, more than the task's "
                           f"pom_options.max_samples ({self.options['max_samples']})")
        weights = arrays_of(update, f"POM {self.privacy_mode}")
        start = self.part.global_weights(message)
        if [np.shape(w) for w in weights] != [np.shape(w) for w in start]:
            raise PomError(f"the update's arrays have shapes {[np.shape(w) for w in weights]}, the round's global "
                           f"arrays {[np.shape(w) for w in start]}")
        return flatten(weights) - flatten(start), n
