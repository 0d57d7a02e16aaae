"""DP-SGD in the round engine: the calls an algorithm that trains with DP-SGD makes when a task has ``dp``.

Aggregator: ``start_budget`` (in the algorithm's setup, before its setup message: ask the
participants for their training-set sizes, calibrate, refuse a budget too small for one round;
the algorithm keeps the result as its ``dp`` and sends ``setup_header()`` with the model) and
``restore_budget`` (from a checkpoint). Checking and accounting every update, and the ``dp`` entry
of every round record, are the engine's: ``dp.accounting_aggregation.DPAccounting``. Participant:
``participant_budget`` (from the setup message) and ``train_private`` instead of ``model.fit``.
"""
from __future__ import annotations

from pathlib import Path

from werkbund.algorithms.arrays import UpdateRejected
from werkbund.algorithms.engine.errors import TaskFailure
from werkbund.algorithms.privacy.dp.accounting_pld import NEIGHBOURING_RELATION, CalibrationError
from werkbund.algorithms.privacy.dp.budget import AggregatorBudget, BudgetExceeded, ParticipantBudget

PLAN_KIND = "dp_plan"


def start_budget(aggregator) -> AggregatorBudget | None:
    """The task's budget with each participant's noise multiplier, or None for a task without DP."""
    definition = aggregator.definition
    if not definition.get("dp"):
        return None
    sizes: dict[str, int] = {}

    def take(message):
        n = message.get("n_train")
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            raise UpdateRejected(f"the DP plan needs a positive training-set size, not {n!r}")
        sizes[message.sender] = n

    aggregator.exchange(PLAN_KIND, expect=PLAN_KIND, number=-1, handler=take)
    try:
        budget = AggregatorBudget(definition, sizes)
        budget.check_first_round(aggregator.active)
    except (CalibrationError, BudgetExceeded) as exc:
        raise TaskFailure(f"differential privacy: {exc}") from None
    aggregator.progress.message(budget.describe())
    return budget


def restore_budget(definition: dict, state: dict | None) -> AggregatorBudget | None:
    """The budget saved in an aggregator checkpoint (None for a task without DP)."""
    if not definition.get("dp"):
        return None
    if not state:
        raise TaskFailure("the checkpoint of this DP task holds no privacy accounting; it cannot be resumed")
    return AggregatorBudget.restore(definition, state)


ACCOUNT_FILE = "dp_account.json"


def participant_budget(participant, setup_message) -> ParticipantBudget | None:
    """The participant's budget for the plan in ``setup_message``, with every step it already took in
    this task: from its account file in ``participant.state_dir`` (kept across restarts), or from its
    budget before this (re-sent) setup. A re-sent setup never resets the account."""
    if not participant.definition.get("dp"):
        return None
    state_dir = getattr(participant, "state_dir", None)
    path = None if state_dir is None else Path(state_dir) / ACCOUNT_FILE
    return ParticipantBudget(participant.definition, setup_message.get("dp"), participant.channel.name,
                             int(len(participant.train_data)), path=path,
                             previous=getattr(participant, "dp", None))


def train_private(participant, number: int) -> tuple[list, dict]:
    """One round of DP-SGD on the participant's training split; the weights and the update header.

    The header carries the round's ``(q, sigma, steps)`` and the participant's own epsilon; no
    training loss, which would be a statistic of the private records released without noise.
    """
    from werkbund.algorithms.privacy.dp.sgd import DPSGDTrainer

    budget: ParticipantBudget | None = getattr(participant, "dp", None)
    if budget is None:  # never train without DP-SGD in a DP task, e.g. after a setup that could not be taken
        raise BudgetExceeded("the task has differential privacy, but no DP plan was taken from the aggregator's "
                             "setup; refused to train")
    budget.check_next_round()
    trainer = getattr(participant, "dp_trainer", None)
    # a re-sent setup makes a new model (and may send a new noise multiplier): the trainer follows it
    if (trainer is None or trainer.model is not participant.model
            or trainer.noise_multiplier != budget.noise_multiplier or trainer.l2_norm_clip != budget.l2_norm_clip):
        participant.dp_trainer = DPSGDTrainer(participant.model, budget.l2_norm_clip, budget.noise_multiplier,
                                              participant.definition["batch_size"])
    epochs = participant.definition["epochs"]
    participant.progress.epochs_started(number, epochs)
    events, _ = participant.dp_trainer.train(
        participant.train_data.x, participant.y_train, epochs,
        on_epoch=lambda epoch, logs: participant.progress.epoch_done(epoch, epochs, {}))
    epsilon = budget.add(events)
    participant.progress.message(f"round {number + 1}: DP-SGD on {len(participant.y_train)} rows, "
                                 f"{events.steps} steps, q {events.q:.4g}, noise multiplier "
                                 f"{events.noise_multiplier:.4g}; own epsilon {epsilon:.4f}")
    header = {"n_samples": int(len(participant.y_train)), "dp": events.as_header(), "epsilon_spent": epsilon,
              "neighbouring_relation": NEIGHBOURING_RELATION}
    return participant.model.get_weights(), header
