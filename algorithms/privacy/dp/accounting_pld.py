"""Privacy accounting for DP-SGD with Google's ``dp-accounting`` (privacy loss distributions).

One DP-SGD step on Poisson-sampled records is ``PoissonSampledDpEvent(q, GaussianDpEvent(sigma))``;
a participant's training is a composition of such steps. Steps with the same ``(q, sigma)`` are
grouped into one ``SelfComposedDpEvent`` (composition is commutative), so the same steps give the
same epsilon whichever order or round they were taken in, and calibration and accounting agree
exactly. Epsilons come from ``dp_accounting.pld.PLDAccountant`` (a tight, pessimistic estimate).

Neighbouring relation: **replace one record** (``NeighboringRelation.REPLACE_ONE``). Each
participant's exact training-set size is public (``n_train`` in the DP plan, ``n_samples`` and
``q`` in every update header and on the ledger); under add-or-remove-one neighbours the size
alone would tell whether a record was added, so that guarantee would not hold for what is
released. Under replace-one neighbours the size is the same in both worlds and harmless. A
replaced record moves the clipped gradient sum by up to ``2 * l2_norm_clip``, which the
accountant's replace-one Gaussian takes into account: the same noise gives a larger epsilon than
under add-or-remove (about twice as large for small epsilons); the reported epsilon is this one,
and calibration uses the same relation.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

# largest noise multiplier the calibration searches; a target that needs more is refused
MAX_NOISE_MULTIPLIER = 1000.0
# smallest one it returns: below it epsilon is in the dozens or more, and the accountant gets slow
MIN_NOISE_MULTIPLIER = 0.5


# the neighbouring relation of every epsilon here (shown in the DP plan, the round records, the model's metadata)
NEIGHBOURING_RELATION = "replace_one"


class CalibrationError(ValueError):
    """No noise multiplier reaches the target (epsilon, delta) for the planned training."""


@dataclass(frozen=True)
class StepEvents:
    """``steps`` DP-SGD steps with sampling rate ``q`` and noise multiplier ``noise_multiplier``."""

    q: float
    noise_multiplier: float
    steps: int

    def as_header(self) -> dict:
        return {"q": self.q, "noise_multiplier": self.noise_multiplier, "steps": self.steps}


def sampling_rate(batch_size: int, n_records: int) -> float:
    """Poisson sampling rate that gives ``batch_size`` records per step on average."""
    if n_records <= 0:
        raise ValueError("DP training needs at least one training record")
    return min(1.0, batch_size / n_records)


def steps_per_epoch(batch_size: int, n_records: int) -> int:
    return max(1, math.ceil(n_records / batch_size))


def round_events(batch_size: int, epochs: int, n_records: int, noise_multiplier: float) -> StepEvents:
    """The steps one participant with ``n_records`` training records takes in one round."""
    return StepEvents(sampling_rate(batch_size, n_records), float(noise_multiplier),
                      epochs * steps_per_epoch(batch_size, n_records))


def dp_event(events):
    """The dp-accounting event of a list of StepEvents, steps of equal (q, sigma) grouped."""
    import dp_accounting  # imported on use: it costs about a second, and most tasks have no DP

    grouped: Counter = Counter()
    for e in events:
        grouped[(float(e.q), float(e.noise_multiplier))] += int(e.steps)
    parts = [dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
        for (q, sigma), steps in sorted(grouped.items()) if steps > 0]
    if not parts:
        return dp_accounting.NoOpDpEvent()
    return parts[0] if len(parts) == 1 else dp_accounting.ComposedDpEvent(parts)


def epsilon_spent(events, delta: float) -> float:
    """Epsilon (PLD accountant) of the composition of ``events`` at ``delta``; 0.0 for no steps."""
    key = tuple(sorted(((float(e.q), float(e.noise_multiplier), int(e.steps)) for e in events)))
    return _epsilon(key, float(delta))


@lru_cache(maxsize=4096)
def _epsilon(key: tuple, delta: float) -> float:
    events = [StepEvents(q, sigma, steps) for q, sigma, steps in key]
    if not any(e.steps for e in events):
        return 0.0
    if any(e.noise_multiplier <= 0 for e in events if e.steps):
        return math.inf
    from dp_accounting.pld import pld_privacy_accountant

    import dp_accounting

    accountant = pld_privacy_accountant.PLDAccountant(dp_accounting.NeighboringRelation.REPLACE_ONE)
    accountant.compose(dp_event(events))
    return float(accountant.get_epsilon(delta))


def worst_epsilon(records: dict[str, list], delta: float) -> tuple[float, str | None]:
    """The largest epsilon over participants (each one's own records) and whose it is."""
    worst, who = 0.0, None
    for participant, events in sorted(records.items()):
        eps = epsilon_spent(events, delta)
        if who is None or eps > worst:
            worst, who = eps, participant
    return worst, who


def planned_epsilon(noise_multiplier: float, n_records: list[int], batch_size: int, epochs: int,
                    rounds: int, delta: float) -> float:
    """Worst-case epsilon over sites of the given sizes after ``rounds`` full rounds."""
    return max(epsilon_spent([round_events(batch_size, epochs, n, noise_multiplier)] * rounds, delta)
               for n in sorted(set(n_records)))


def calibrate_noise(target_epsilon: float, delta: float, n_records: list[int], batch_size: int, epochs: int,
                    rounds: int, tolerance: float = 0.005) -> float:
    """The smallest noise multiplier (within ``tolerance``, relative; at least MIN_NOISE_MULTIPLIER)
    that keeps every site of the given sizes within ``target_epsilon`` after ``rounds`` rounds of
    ``epochs`` epochs. The result always fits: the search keeps the upper end."""
    if not n_records:
        raise CalibrationError("no participant reported a training-set size")

    def fits(sigma: float) -> bool:
        return planned_epsilon(sigma, n_records, batch_size, epochs, rounds, delta) <= target_epsilon

    high = 1.0
    while not fits(high):
        high *= 2
        if high > MAX_NOISE_MULTIPLIER:
            raise CalibrationError(
                f"epsilon {target_epsilon:g} at delta {delta:g} cannot be reached with a noise multiplier up to "
                f"{MAX_NOISE_MULTIPLIER:g} for {rounds} rounds of {epochs} epochs; raise epsilon or the batch "
                "size relative to the data, or plan fewer rounds or epochs")
    low = high / 2
    if high == 1.0:
        if fits(MIN_NOISE_MULTIPLIER):
            return MIN_NOISE_MULTIPLIER
        low = MIN_NOISE_MULTIPLIER
    while high - low > tolerance * high:
        middle = (low + high) / 2
        if fits(middle):
            high = middle
        else:
            low = middle
    return math.ceil(high * 1e6) / 1e6  # rounded up: more noise, never over the target
