"""The aggregation stack of a task, built from its definition (the layers: ``engine/update_aggregation.py``)."""
from __future__ import annotations

from werkbund.algorithms.engine.update_aggregation import (AlgorithmUpdates, PlainEncoding, UpdateAggregation,
                                                           UpdateEncoding)
from werkbund.algorithms.privacy.dp.accounting_aggregation import DPAccounting
from werkbund.algorithms.privacy.ckks.aggregation import HomomorphicAggregation, HomomorphicParticipant
from werkbund.algorithms.privacy.secagg.aggregation import SecureAggregation, SecureAggregationParticipant

PRIVACY_MODES = {2: (SecureAggregation, SecureAggregationParticipant),
                 3: (HomomorphicAggregation, HomomorphicParticipant)}


def build_aggregation(aggregator) -> UpdateAggregation:
    """The layers every update of the task goes through, outermost first:

    DP accounting (``dp``: each update's DP-SGD steps checked against the plan and accounted)
    -> the privacy mode (``pom`` 2: secure aggregation, 3: CKKS; the aggregator obtains only the
       sum, and the layers inside get one update: the sample-weighted mean)
    -> the algorithm (``accept_update``: its strategy, FedAvg's mean by default; under POM 1 also a
       robust rule over every update, under POM 2 and 3 a server optimizer's step over the mean).
    """
    definition = aggregator.definition
    stack: UpdateAggregation = AlgorithmUpdates(aggregator)
    pom = definition.get("pom", 1)
    if pom in PRIVACY_MODES:
        stack = PRIVACY_MODES[pom][0](stack, aggregator)
    if definition.get("dp"):
        stack = DPAccounting(stack, aggregator)
    return stack


def build_encoding(participant) -> UpdateEncoding:
    """The participant's side of the task's privacy mode: how its update goes on the wire."""
    pom = participant.definition.get("pom", 1)
    return PRIVACY_MODES[pom][1](participant) if pom in PRIVACY_MODES else PlainEncoding(participant)
