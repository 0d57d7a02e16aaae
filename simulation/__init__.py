"""Simulated federations: many virtual companies from one data set, through the platform core, in one process.

- :func:`simulate` (``werkbund.simulate``): run a task with N virtual participants, get its
  ``werkbund.Result`` (:mod:`.runner`);
- :mod:`.partition`: IID, by column, Dirichlet label skew, quantity skew;
- :mod:`.platform`: the in-process core with accounts that cost no argon2, one-transaction
  enrolment and routes looked up once;
- :mod:`.sites`, :mod:`.pool`: virtual participants as actors on a bounded thread pool;
- :mod:`.ray_backend`: the same participants as Ray actors (the optional ``ray`` extra).

``docs/simulation.md`` walks through it.
"""
from werkbund.simulation.partition import (PartitionSpec, by_column, dirichlet, iid, parse_partition, partition_rows,
                                           quantity)
from werkbund.simulation.runner import SimulationResult, simulate

__all__ = ["PartitionSpec", "SimulationResult", "by_column", "dirichlet", "iid", "parse_partition",
           "partition_rows", "quantity", "simulate"]
