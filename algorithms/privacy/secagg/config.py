"""Round parameters every party of a POM 2 round agrees on, and the share ordering they imply."""
from __future__ import annotations

import numbers
from dataclasses import dataclass

from werkbund.algorithms.privacy.secagg.encoding import FixedPointEncoder
from werkbund.algorithms.privacy.secagg.errors import SecAggError


def min_threshold(n_participants: int) -> int:
    """The smallest admissible threshold: t > n/2."""
    return n_participants // 2 + 1


@dataclass(frozen=True)
class SecAggConfig:
    """What the server announces in the setup stage (``to_message``) and participants check.

    ``participants`` is the round's roster; its sorted order defines each participant's Shamir
    share index (1-based) and the "v > u" order of the pairwise masks.  ``threshold`` is the
    Shamir threshold t with n/2 < t <= n; it is also the smallest number of participants that
    may survive any stage.
    """

    round_id: str
    participants: tuple[str, ...]
    threshold: int
    vector_length: int
    clip_range: float
    max_weight: float
    modulus_bits: int = 64
    frac_bits: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.round_id, str) or not self.round_id:
            raise SecAggError("round_id must be a non-empty string")
        roster = tuple(self.participants)
        if any(not isinstance(p, str) or not p for p in roster):
            raise SecAggError("participant ids must be non-empty strings")
        if len(set(roster)) != len(roster):
            raise SecAggError("participant ids must be unique")
        n = len(roster)
        if n < 2:
            raise SecAggError("secure aggregation needs at least 2 participants")
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, numbers.Integral) or not min_threshold(n) <= t <= n:
            raise SecAggError(f"threshold {t} is invalid for {n} participants: it must satisfy "
                              f"n/2 < t <= n, i.e. {min_threshold(n)} <= t <= {n}")
        if not isinstance(self.vector_length, numbers.Integral) or self.vector_length < 1:
            raise SecAggError("vector_length must be a positive integer")
        object.__setattr__(self, "participants", tuple(sorted(roster)))
        object.__setattr__(self, "threshold", int(t))
        # build once to validate the overflow bound and to fix frac_bits for everyone
        enc = FixedPointEncoder(self.clip_range, self.max_weight, n, self.modulus_bits, self.frac_bits)
        object.__setattr__(self, "frac_bits", enc.frac_bits)

    @property
    def n(self) -> int:
        return len(self.participants)

    def index(self, participant: str) -> int:
        """The participant's 1-based Shamir share index (its rank in the sorted roster)."""
        try:
            return self.participants.index(participant) + 1
        except ValueError:
            raise SecAggError(f"{participant!r} is not on the roster of round {self.round_id!r}") from None

    def encoder(self) -> FixedPointEncoder:
        return FixedPointEncoder(self.clip_range, self.max_weight, self.n, self.modulus_bits, self.frac_bits)

    def require(self, count: int, what: str) -> None:
        """Raise unless at least ``threshold`` participants are left at a stage."""
        if count < self.threshold:
            raise SecAggError(f"only {count} of {self.n} participants {what}; "
                              f"the threshold is {self.threshold}")

    def to_message(self) -> dict:
        return {"stage": "setup", "round_id": self.round_id, "participants": list(self.participants),
                "threshold": self.threshold, "vector_length": int(self.vector_length),
                "clip_range": float(self.clip_range), "max_weight": float(self.max_weight),
                "modulus_bits": int(self.modulus_bits), "frac_bits": int(self.frac_bits)}

    @classmethod
    def from_message(cls, msg: dict) -> SecAggConfig:
        if not isinstance(msg, dict) or msg.get("stage") != "setup":
            raise SecAggError("not a secure-aggregation setup message")
        try:
            cfg = cls(round_id=msg["round_id"], participants=tuple(msg["participants"]),
                      threshold=msg["threshold"], vector_length=msg["vector_length"],
                      clip_range=msg["clip_range"], max_weight=msg["max_weight"],
                      modulus_bits=msg["modulus_bits"], frac_bits=msg["frac_bits"])
        except KeyError as exc:
            raise SecAggError(f"the setup message lacks {exc.args[0]!r}") from None
        return cfg
