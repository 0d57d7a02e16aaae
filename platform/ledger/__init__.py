"""The tamper-evident ledger's pure building blocks (no storage, no network).

* :mod:`.merkle`  RFC 9162 Merkle tree, inclusion and consistency proofs
* :mod:`.entries` canonical (RFC 8785) entries and checkpoints, Ed25519 signing
* :mod:`.verify`  offline verification of a log against a signed checkpoint
"""
from .entries import (CHECKPOINT_FIELDS, CHECKPOINT_PREFIX, COSIGN_PREFIX, ENTRY_FIELDS,
                      ENTRY_PREFIX, ENTRY_TYPES, GENESIS_PREV, PLATFORM_AUTHOR, EntryError,
                      canonical_bytes, checkpoint_bytes, cosign_checkpoint, decode_public_key,
                      decode_signature, encode_public_key, encode_signature, entry_hash,
                      entry_leaf_hash, make_checkpoint, make_entry, sign_checkpoint, sign_entry,
                      utc_timestamp, validate_checkpoint, validate_entry,
                      verify_checkpoint_signature, verify_cosignature, verify_entry_signature)
from .merkle import (EMPTY_ROOT, HASH_SIZE, MerkleTree, ProofError, consistency_proof,
                     inclusion_proof, leaf_hash, node_hash, root_from_leaf_hashes,
                     verify_consistency, verify_inclusion)
from .verify import Check, Problem, Report, keys_in_force, verify_log

__all__ = [
    "CHECKPOINT_FIELDS", "CHECKPOINT_PREFIX", "COSIGN_PREFIX", "ENTRY_FIELDS", "ENTRY_PREFIX",
    "ENTRY_TYPES", "GENESIS_PREV", "PLATFORM_AUTHOR", "EntryError", "canonical_bytes",
    "checkpoint_bytes", "cosign_checkpoint", "decode_public_key", "decode_signature",
    "encode_public_key", "encode_signature", "entry_hash", "entry_leaf_hash", "make_checkpoint",
    "make_entry", "sign_checkpoint", "sign_entry", "utc_timestamp", "validate_checkpoint",
    "validate_entry", "verify_checkpoint_signature", "verify_cosignature",
    "verify_entry_signature",
    "EMPTY_ROOT", "HASH_SIZE", "MerkleTree", "ProofError", "consistency_proof",
    "inclusion_proof", "leaf_hash", "node_hash", "root_from_leaf_hashes", "verify_consistency",
    "verify_inclusion",
    "Check", "Problem", "Report", "keys_in_force", "verify_log",
]
