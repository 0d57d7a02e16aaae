"""The platform's side of the tamper-evident ledger: where the log is kept and who may write to it.

* :mod:`.store`       the platform's tables and signing key
* :mod:`.service`, :mod:`.key_service`, :mod:`.tree_cache`  appending, proofs, cosignatures and keys on
  the platform

The ledger's pure parts (entries and checkpoints, the Merkle tree, offline verification), which members
and verifiers use without a platform, are the package :mod:`werkbund.ledger` (folder ``ledger/``).
Import from the module that holds a name: this package re-exports nothing.
"""
