"""The tamper-evident ledger: its pure parts, which clients import, and the platform's storage and service.

* :mod:`.merkle`      RFC 9162 Merkle tree, inclusion and consistency proofs
* :mod:`.entries`     canonical (RFC 8785) entries and checkpoints, Ed25519 signing
* :mod:`.verify`      offline verification of a log against a signed checkpoint
* :mod:`.store`       the platform's tables and signing key
* :mod:`.service`, :mod:`.key_service`, :mod:`.tree_cache`  appending, proofs, cosignatures and keys on
  the platform

Import from the module that holds a name (``from werkbund.platform.ledger.verify import verify_log``):
this package re-exports nothing, so importing one part never loads the others.
"""
