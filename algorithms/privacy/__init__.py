"""Privacy: the layers around the aggregation (POM 2, POM 3, DP accounting) and their cores; see README.md."""
from werkbund.algorithms.privacy.secagg.config import SecAggConfig, min_threshold
from werkbund.algorithms.privacy.secagg.encoding import FixedPointEncoder
from werkbund.algorithms.privacy.secagg.errors import (
    SecAggConsistencyError, SecAggError, SecAggOverflowError, SecAggRosterError, SecAggSignatureError,
)
from werkbund.algorithms.privacy.secagg.participant import SecAggParticipant
from werkbund.algorithms.privacy.secagg.server import SecAggResult, SecAggServer

__all__ = ["FixedPointEncoder", "SecAggConfig", "SecAggConsistencyError", "SecAggError", "SecAggOverflowError",
           "SecAggParticipant", "SecAggResult", "SecAggRosterError", "SecAggServer", "SecAggSignatureError",
           "min_threshold"]
