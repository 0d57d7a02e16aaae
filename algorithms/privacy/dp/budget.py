"""The privacy budget of a DP task: calibration, per-round accounting, and the stop rule.

The task definition's ``dp`` field (checked by the platform) gives ``delta``, ``l2_norm_clip``
and either a target ``epsilon`` (the noise is calibrated for it) or a ``noise_multiplier``
(fixed noise; an ``epsilon`` next to it is a budget that may end training early).

Aggregator (``AggregatorBudget``): before round 1 it asks each participant for its
training-set size, calibrates each participant's noise multiplier so that the planned
``rounds x epochs x ceil(n / batch_size)`` Poisson-sampled steps stay within the target
(a smaller site samples a larger fraction per step and needs more noise), and sends the
multipliers in the setup message. Every update carries the participant's ``(q, sigma,
steps)``, which must be what the plan says; the aggregator composes them per participant
with the PLD accountant (replace-one neighbours: the training-set sizes are public) and
reports the worst participant's epsilon in every round record and the final result. Before a round it checks that every active participant stays within
the budget after it; if not, training stops there and the task completes with the model so far.

Participant (``ParticipantBudget``): keeps its own steps, on disk in its state folder for the task
(so a restart or a re-sent setup never resets them), and refuses to train a round that would take
its epsilon over the task's budget, whatever the aggregator sent it.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from werkbund.algorithms.arrays import UpdateRejected
from werkbund.algorithms.privacy.dp.accounting_pld import (NEIGHBOURING_RELATION, StepEvents, calibrate_noise,
                                                           epsilon_spent, round_events, worst_epsilon)


class BudgetExceeded(RuntimeError):
    """Training another round would spend more than the task's privacy budget."""


def dp_settings(definition: dict) -> dict | None:
    """The definition's ``dp`` field with defaults, or None for a task without DP."""
    dp = definition.get("dp")
    if not dp:
        return None
    return {"epsilon": dp.get("epsilon"), "delta": float(dp["delta"]), "l2_norm_clip": float(dp.get("l2_norm_clip") or 1.0),
            "noise_multiplier": dp.get("noise_multiplier")}


class AggregatorBudget:
    def __init__(self, definition: dict, n_records: dict[str, int], noise: dict[str, float] | None = None):
        self.settings = dp_settings(definition)
        self.batch_size, self.epochs, self.rounds = definition["batch_size"], definition["epochs"], definition["rounds"]
        self.n_records = dict(n_records)
        self.delta, self.budget = self.settings["delta"], self.settings["epsilon"]
        fixed = self.settings["noise_multiplier"]
        by_size = {}
        for n in sorted(set(self.n_records.values()) if noise is None else ()):
            by_size[n] = float(fixed) if fixed is not None else calibrate_noise(
                self.budget, self.delta, [n], self.batch_size, self.epochs, self.rounds)
        self.noise = dict(noise) if noise is not None else {p: by_size[n] for p, n in self.n_records.items()}
        self.records: dict[str, list[StepEvents]] = {p: [] for p in self.n_records}
        self.this_round: dict[str, StepEvents] = {}
        self.stopped: str | None = None

    def state(self) -> dict:
        """JSON-able state for an aggregator checkpoint."""
        return {"n_records": self.n_records, "noise": self.noise, "stopped": self.stopped,
                "records": {p: [e.as_header() for e in events] for p, events in self.records.items()}}

    @classmethod
    def restore(cls, definition: dict, state: dict) -> "AggregatorBudget":
        budget = cls(definition, state["n_records"], state["noise"])
        budget.records = {p: [StepEvents(float(e["q"]), float(e["noise_multiplier"]), int(e["steps"])) for e in events]
                          for p, events in state["records"].items()}
        budget.stopped = state.get("stopped")
        return budget

    # ---------------------------------------------------------------- plan
    def planned(self, participant: str) -> StepEvents:
        return round_events(self.batch_size, self.epochs, self.n_records[participant], self.noise[participant])

    def setup_header(self) -> dict:
        return {"delta": self.delta, "epsilon": self.budget, "l2_norm_clip": self.settings["l2_norm_clip"],
                "noise_multiplier": dict(self.noise), "neighbouring_relation": NEIGHBOURING_RELATION}

    def describe(self) -> str:
        noise = ", ".join(f"{p} {s:.3f}" for p, s in sorted(self.noise.items()))
        target = f"budget epsilon {self.budget:g}" if self.budget is not None else "no epsilon budget"
        return (f"DP-SGD: {target} at delta {self.delta:g} (neighbouring records: replace one), "
                f"clip {self.settings['l2_norm_clip']:g}, noise multiplier {noise}")

    # ------------------------------------------------------------- rounds
    def record(self, participant: str, message) -> None:
        """Check an update's DP header against the plan and record its steps (UpdateRejected if off-plan)."""
        header = message.get("dp")
        if participant not in self.noise:
            raise UpdateRejected(f"{participant} has no DP plan in this task")
        if not isinstance(header, dict):
            raise UpdateRejected("the task uses differential privacy, but the update carries no DP header")
        expected = self.planned(participant)
        if message.get("n_samples") != self.n_records[participant]:
            raise UpdateRejected(f"the update claims {message.get('n_samples')} training records, the DP plan was "
                                 f"made for {self.n_records[participant]}")
        try:
            got = StepEvents(float(header["q"]), float(header["noise_multiplier"]), int(header["steps"]))
        except (KeyError, TypeError, ValueError):
            raise UpdateRejected(f"malformed DP header {header!r}") from None
        if (not math.isclose(got.q, expected.q, rel_tol=1e-9) or got.steps != expected.steps
                or not math.isclose(got.noise_multiplier, expected.noise_multiplier, rel_tol=1e-9)):
            raise UpdateRejected(f"DP header {got.as_header()} differs from the plan {expected.as_header()}")
        self.records[participant].append(expected)
        self.this_round[participant] = expected

    def spent(self) -> dict:
        """Epsilon spent so far: the worst participant's, and each one's."""
        each = {p: epsilon_spent(events, self.delta) for p, events in self.records.items()}
        worst, who = worst_epsilon(self.records, self.delta)
        return {"epsilon": worst, "worst_participant": who, "delta": self.delta, "budget": self.budget,
                "neighbouring_relation": NEIGHBOURING_RELATION, "participants": each}

    def after_round(self, number: int, active: list[str]) -> dict:
        """The ``dp`` entry of round ``number``'s record; decides whether the next round fits."""
        entry = self.spent()
        entry["events"] = {p: e.as_header() for p, e in sorted(self.this_round.items())}
        self.this_round = {}
        if number + 1 < self.rounds:
            why = self._why_not(number + 1, active)
            if why:
                self.stopped = (f"privacy budget spent: {why}; training stopped after {number + 1} of "
                                f"{self.rounds} rounds")
                entry["stopped"] = self.stopped
        return {"dp": entry}

    def check_first_round(self, active: list[str]) -> None:
        """Refuse to start at all if even one round exceeds the budget (BudgetExceeded)."""
        why = self._why_not(0, active)
        if why:
            raise BudgetExceeded(f"the privacy budget is too small for a single round: {why}")

    def _why_not(self, number: int, active: list[str]) -> str | None:
        if self.budget is None:
            return None
        for participant in sorted(active):
            after = epsilon_spent(self.records[participant] + [self.planned(participant)], self.delta)
            if after > self.budget:
                return (f"round {number + 1} would take {participant} to epsilon {after:.4g} > budget "
                        f"{self.budget:g} (delta {self.delta:g})")
        return None

    def summary(self) -> dict:
        entry = self.spent()
        entry.update(noise_multiplier=dict(self.noise), l2_norm_clip=self.settings["l2_norm_clip"],
                     rounds_trained=max((len(e) for e in self.records.values()), default=0))
        if self.stopped:
            entry["stopped"] = self.stopped
        return entry


class ParticipantBudget:
    """A participant's own account of its training steps in one task.

    With ``path`` (a file in the participant's state folder for this task, ``RoundParticipant.state_dir``)
    the account is kept on disk (JSON, 0600, replaced atomically after every round trained) and loaded
    when the participant starts, so neither a restart nor a re-sent ``setup`` resets it; ``previous`` (the
    budget of the same participant object before a re-sent ``setup``) carries the steps over when there
    is no file.
    """

    def __init__(self, definition: dict, setup: dict, participant: str, n_records: int, path=None,
                 previous: "ParticipantBudget | None" = None):
        settings = dp_settings(definition)
        if settings is None:
            raise ValueError("the task has no dp settings")
        self.delta, self.budget, self.l2_norm_clip = settings["delta"], settings["epsilon"], settings["l2_norm_clip"]
        if settings["noise_multiplier"] is not None:  # fixed by the definition: the aggregator has no say
            self.noise_multiplier = float(settings["noise_multiplier"])
        else:
            noise = (setup or {}).get("noise_multiplier") or {}
            if not isinstance(noise.get(participant), (int, float)) or noise[participant] <= 0:
                raise ValueError(f"the aggregator sent no valid noise multiplier for {participant}")
            self.noise_multiplier = float(noise[participant])
        self.planned = round_events(definition["batch_size"], definition["epochs"], n_records, self.noise_multiplier)
        self.participant = participant
        self.path = Path(path) if path is not None else None
        self.events: list[StepEvents] = list(previous.events) if previous is not None else []
        stored = load_account(self.path) if self.path is not None else None
        if stored is not None:
            if stored["delta"] != self.delta:
                raise AccountError(f"the DP account {self.path} was kept at delta {stored['delta']:g}, the task's "
                                   f"is {self.delta:g}; refusing to train")
            if len(stored["events"]) >= len(self.events):
                self.events = stored["events"]

    def check_next_round(self) -> None:
        if self.budget is None:
            return
        after = epsilon_spent(self.events + [self.planned], self.delta)
        if after > self.budget:
            raise BudgetExceeded(f"training another round would spend epsilon {after:.4g}, over the task's budget "
                                 f"{self.budget:g} (delta {self.delta:g}); refused")

    def add(self, events: StepEvents) -> float:
        """Account a round's steps (on disk first, when kept there); the epsilon spent so far."""
        self.events.append(events)
        epsilon = epsilon_spent(self.events, self.delta)
        if self.path is not None:
            save_account(self.path, {
                "format": ACCOUNT_FORMAT, "participant": self.participant, "delta": self.delta,
                "neighbouring_relation": NEIGHBOURING_RELATION, "epsilon": epsilon,
                "events": [e.as_header() for e in self.events]})
        return epsilon


ACCOUNT_FORMAT = 1


class AccountError(ValueError):
    """A participant's stored DP account cannot be read; training is refused rather than started afresh."""


def load_account(path: Path) -> dict | None:
    """The account stored at ``path`` (None if there is none yet): its delta and its steps."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise AccountError(f"the DP account {path} cannot be read ({exc}); refusing to train") from None
    try:
        if data["format"] != ACCOUNT_FORMAT or data["neighbouring_relation"] != NEIGHBOURING_RELATION:
            raise ValueError("another format")
        events = [StepEvents(float(e["q"]), float(e["noise_multiplier"]), int(e["steps"])) for e in data["events"]]
        return {"delta": float(data["delta"]), "events": events}
    except (KeyError, TypeError, ValueError) as exc:
        raise AccountError(f"the DP account {path} is not one this version keeps ({exc}); refusing to train") from None


def save_account(path: Path, account: dict) -> None:
    """Write ``account`` to ``path`` as JSON, owner-only (0600), replacing the old file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # a leftover of a crash: made anew, 0600
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(account, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
