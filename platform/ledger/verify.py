"""Offline verification of a task's ledger against a signed checkpoint.

``verify_log`` needs only data: the (entry, signature) pairs, the authors' keys as
at entry 0, the checkpoint, its signature and the platform key. It checks every
signature, that seq runs 0, 1, 2, ... without gaps, every ``prev`` link, the
Merkle root against the checkpoint and, optionally, an earlier checkpoint
(consistency proof, and its root recomputed from the entries) and cosignatures.

Key changes are entries: ``key_rotated`` (payload ``public_key``: base64, and
``subject``: default the author) replaces the subject's key for later entries;
``key_revoked`` (``subject``, optional ``public_key`` that must be the current
key) removes it. Each is signed by the key in force before it, by the subject
or by one of ``authorities`` (default: the platform).

The :class:`Report` has one :class:`Check` per property, each with the
:class:`Problem` list naming the entry (seq) and why; ``str(report)`` prints it.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Iterable, Mapping, Sequence

from . import merkle
from .entries import (GENESIS_PREV, PLATFORM_AUTHOR, EntryError, canonical_bytes, decode_public_key,
                      encode_public_key, validate_checkpoint, verify_checkpoint_signature,
                      verify_cosignature, verify_entry_signature)

OK, FAILED, SKIPPED = "ok", "failed", "skipped"


@dataclass(frozen=True)
class Problem:
    check: str
    message: str
    seq: int | None = None  # the entry concerned, when there is one

    def __str__(self) -> str:
        return self.message


@dataclass
class Check:
    name: str
    status: str = OK
    detail: str = ""
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status != FAILED

    def fail(self, message: str, seq: int | None = None) -> None:
        self.status = FAILED
        self.problems.append(Problem(self.name, message, seq))


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def problems(self) -> list[Problem]:
        return [p for c in self.checks for p in c.problems]

    @property
    def bad_entries(self) -> list[int]:
        """The seq numbers named by any problem, sorted."""
        return sorted({p.seq for p in self.problems if p.seq is not None})

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def new(self, name: str) -> Check:
        self.checks.append(Check(name))
        return self.checks[-1]

    def to_dict(self) -> dict:
        return {"ok": self.ok, **asdict(self)}

    def __str__(self) -> str:
        lines = []
        for c in self.checks:
            lines.append(f"{c.status.upper():7} {c.name}" + (f": {c.detail}" if c.detail else ""))
            lines.extend(f"        {p.message}" for p in c.problems)
        lines.append("verified" if self.ok else "VERIFICATION FAILED")
        return "\n".join(lines)


def _apply_key_change(entry: dict, keys: dict, revoked: dict, authorities: set, check: Check,
                      seq: int) -> None:
    payload, author = entry["payload"], entry["author"]
    subject = payload.get("subject", author)
    if subject != author and author not in authorities:
        check.fail(f"entry {seq}: {author} may not change the key of {subject}", seq)
        return
    if entry["type"] == "key_rotated":
        try:
            keys[subject] = decode_public_key(payload.get("public_key"))
        except (EntryError, ValueError):
            check.fail(f"entry {seq}: key_rotated carries no valid public_key", seq)
            return
        revoked.pop(subject, None)
    else:
        named = payload.get("public_key")
        if named is not None and (subject not in keys or named != encode_public_key(keys[subject])):
            check.fail(f"entry {seq}: revokes a key that is not {subject}'s current key", seq)
            return
        keys.pop(subject, None)
        revoked[subject] = seq


def _check_signatures(entries, keys, authorities, check: Check) -> dict:
    """Check every signature; return the keys in force after the last entry."""
    keys = {a: decode_public_key(k) for a, k in keys.items()}
    revoked: dict[str, int] = {}
    for entry, signature in entries:
        seq, author = entry["seq"], entry["author"]
        key = keys.get(author)
        if key is None:
            why = (f"{author}'s key was revoked at entry {revoked[author]}" if author in revoked
                   else f"no public key is known for author {author}")
            check.fail(f"entry {seq}: {why}", seq)
            continue
        if not verify_entry_signature(entry, signature, key):
            others = [a for a, k in keys.items()
                      if a != author and verify_entry_signature(entry, signature, k)]
            why = f" (it is {others[0]}'s signature)" if others else ""
            check.fail(f"entry {seq}: signature does not verify with {author}'s key{why}", seq)
            continue
        if entry["type"] in ("key_rotated", "key_revoked"):
            _apply_key_change(entry, keys, revoked, authorities, check, seq)
    if check.ok:
        check.detail = f"{len(entries)} entries signed by their authors"
    return keys


def _check_checkpoint(name, checkpoint, signature, platform_key, task, report) -> bool:
    check = report.new(name)
    try:
        validate_checkpoint(checkpoint)
    except EntryError as exc:
        check.fail(f"{name} is malformed: {exc}")
        return False
    if not verify_checkpoint_signature(checkpoint, signature, platform_key):
        check.fail(f"{name} signature does not verify with the platform key")
    if task is not None and checkpoint["log"] != task:
        check.fail(f"{name} is for log {checkpoint['log']!r}, the entries for task {task!r}")
    check.detail = f"log {checkpoint['log']}, size {checkpoint['size']}, root {checkpoint['root']}"
    return True


def _check_sequence(good, check: Check) -> None:
    expected, previous = 0, None
    for entry, _ in good:
        seq = entry["seq"]
        if seq > expected:
            missing = f"entry {expected}" if seq == expected + 1 else f"entries {expected}..{seq - 1}"
            after = (f"entry {previous} is followed by entry {seq}" if previous is not None
                     else f"the log starts at entry {seq}")
            check.fail(f"{missing} missing: {after}", expected)
        elif seq < expected:
            check.fail(f"entry {seq} is out of order or repeated: it comes after entry {previous}",
                       seq)
        expected, previous = max(expected, seq + 1), seq
    if check.ok:
        check.detail = f"0..{len(good) - 1} without gaps" if good else "empty log"


def _check_chain(good, hashes: list[str], check: Check) -> None:
    prev_hash, prev_seq = GENESIS_PREV, None
    for (entry, _), entry_hash in zip(good, hashes):
        seq = entry["seq"]
        if entry["prev"] != prev_hash:
            if prev_seq is None:
                check.fail(f"entry {seq}: prev hash links to an entry that is not in the log", seq)
            else:
                check.fail(f"entry {seq}: prev hash does not match entry {prev_seq}", seq)
        prev_hash, prev_seq = entry_hash, seq
    if check.ok:
        check.detail = "every entry links to the one before"


def verify_log(entries: Sequence[tuple[dict, bytes | str]], keys: Mapping[str, object],
               checkpoint: dict, checkpoint_signature: bytes | str, platform_key, *,
               previous_checkpoint: dict | None = None,
               previous_signature: bytes | str | None = None,
               consistency_proof: Sequence[bytes | str] | None = None,
               cosignatures: Mapping[str, bytes | str] | None = None,
               authorities: Iterable[str] = (PLATFORM_AUTHOR,)) -> Report:
    """Verify a log; see the module docstring. Bad data gives a failed check, not an error.

    ``keys`` maps author -> public key (object, raw 32 bytes or base64) as at entry 0;
    ``cosignatures`` maps member -> cosignature of ``checkpoint``.
    """
    report = Report()
    entries = list(entries)

    fmt = report.new("entries well-formed")
    good, hashes, leaf_hashes = [], [], []
    for position, pair in enumerate(entries):
        try:
            entry, signature = pair
            data = canonical_bytes(entry)
        except (EntryError, TypeError, ValueError) as exc:
            fmt.fail(f"entry at position {position}: {exc}", position)
            continue
        good.append((entry, signature))
        hashes.append(hashlib.sha256(data).hexdigest())
        leaf_hashes.append(merkle.leaf_hash(data))
    tasks = sorted({e["task"] for e, _ in good})
    if len(tasks) > 1:
        fmt.fail(f"entries belong to several tasks: {', '.join(tasks)}")
    task = tasks[0] if len(tasks) == 1 else None
    if fmt.ok:
        fmt.detail = f"{len(entries)} entries" + (f" of task {task}" if task else "")

    _check_sequence(good, report.new("sequence numbers"))
    _check_chain(good, hashes, report.new("hash chain"))

    sigs = report.new("signatures")
    final_keys = dict(keys)
    try:
        final_keys = _check_signatures(good, keys, set(authorities), sigs)
    except (EntryError, ValueError) as exc:
        sigs.fail(f"the key directory is unusable: {exc}")

    tree = merkle.MerkleTree(leaf_hashes)
    cp_ok = _check_checkpoint("checkpoint", checkpoint, checkpoint_signature, platform_key,
                              task, report)
    last_seq = good[-1][0]["seq"] if good else None
    _check_root(report, tree, checkpoint if cp_ok else None, len(entries), last_seq)

    if previous_checkpoint is not None:
        prev_ok = _check_checkpoint("earlier checkpoint", previous_checkpoint, previous_signature,
                                    platform_key, task, report)
        consistency = report.new("consistency with the earlier checkpoint")
        if not (prev_ok and cp_ok):
            consistency.status, consistency.detail = SKIPPED, "a checkpoint is malformed"
        else:
            _check_consistency(consistency, tree, previous_checkpoint, checkpoint,
                               consistency_proof)

    if cosignatures:
        cosign = report.new("cosignatures")
        for member, sig in sorted(cosignatures.items()):
            key = final_keys.get(member)
            if not cp_ok:
                cosign.fail(f"{member}: cosigns a malformed checkpoint")
            elif key is None or not verify_cosignature(checkpoint, sig, key):
                cosign.fail(f"{member}: cosignature does not verify")
        if cosign.ok:
            cosign.detail = f"checkpoint cosigned by {', '.join(sorted(cosignatures))}"
    return report


def _check_root(report: Report, tree: merkle.MerkleTree, checkpoint, n_entries: int,
                last_seq: int | None) -> None:
    size_check, root_check = report.new("checkpoint size"), report.new("checkpoint root")
    if checkpoint is None:
        for c in (size_check, root_check):
            c.status, c.detail = SKIPPED, "no usable checkpoint"
        return
    size = checkpoint["size"]
    if n_entries < size:
        end = (f"entries end at entry {last_seq} ({n_entries} entries)" if last_seq is not None
               else "there are no well-formed entries")
        missing = 0 if last_seq is None else last_seq + 1
        size_check.fail(f"{end} but the checkpoint covers {size} entries (0..{size - 1})",
                        missing if missing < size else None)
    elif n_entries > size:
        size_check.detail = (f"the checkpoint covers {size} entries; entries {size}.."
                             f"{n_entries - 1} are newer and not covered")
    else:
        size_check.detail = f"the checkpoint covers all {size} entries"
    if tree.size < size:
        root_check.status, root_check.detail = SKIPPED, "too few well-formed entries"
        return
    if tree.root(size).hex() != checkpoint["root"]:
        suspects = report.bad_entries
        hint = f" (first suspect: entry {suspects[0]})" if suspects else ""
        root_check.fail("checkpoint root differs: entries were changed, removed or reordered"
                        + hint, suspects[0] if suspects else None)
    else:
        root_check.detail = f"Merkle root of entries 0..{size - 1} matches"


def _check_consistency(check: Check, tree: merkle.MerkleTree, old: dict, new: dict,
                       proof) -> None:
    old_size, new_size = old["size"], new["size"]
    old_root, new_root = bytes.fromhex(old["root"]), bytes.fromhex(new["root"])
    if old_size > new_size:
        check.fail(f"the earlier checkpoint covers {old_size} entries, more than the "
                   f"{new_size} of the later one: the log shrank")
        return
    done = []
    if proof is not None:
        try:
            proof = [bytes.fromhex(p) if isinstance(p, str) else p for p in proof]
            merkle.verify_consistency(old_size, new_size, old_root, new_root, proof)
            done.append("consistency proof verifies")
        except (merkle.ProofError, ValueError) as exc:
            check.fail(f"consistency proof from {old_size} to {new_size} fails: {exc}")
    if tree.size >= old_size:
        if tree.root(old_size) != old_root:
            check.fail(f"the entries 0..{old_size - 1} do not give the earlier checkpoint's "
                       "root: history was rewritten or shown differently before")
        else:
            done.append(f"entries 0..{old_size - 1} give the earlier root")
    if check.ok:
        check.detail = "; ".join(done) or "nothing to compare"
