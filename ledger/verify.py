"""Offline verification of a task's ledger against a signed checkpoint.

``verify_log`` needs only data: the (entry, signature) pairs, the authors' keys as
at entry 0, the checkpoint, its signature and the platform key. It checks every
signature, that seq runs 0, 1, 2, ... without gaps, every ``prev`` link, that no v2
statement (signed without its seq, :mod:`.entries`) appears twice, the Merkle root
against the checkpoint and, optionally, an earlier checkpoint (consistency proof,
and its root recomputed from the entries) and cosignatures. Entries of both formats
verify, each against what its author signed.

Keys follow the log: ``keys`` gives each author's key as at entry 0 (or at its first
appearance); a ``task_created``/``joined`` entry signed by one of ``authorities``
(default: the platform) that names a ``public_key`` sets that member's key (a joined
entry naming another key than the one in force is flagged); ``key_rotated``
(payload ``public_key``, ``subject`` = the author) is signed with the OLD key and
replaces it for later entries; ``key_revoked`` (by the subject or an authority;
optional ``public_key`` that must be the current key) removes it, so later entries
by that author fail; ``key_registered`` (an authority only, and only when no key is
in force and never was in this log) sets a new one; ``key_reset`` (an authority only:
the platform operator's out-of-band reset of a lost key) sets a new one at any time and
is reported in its own check, with status ``warning``, so every member sees it. An entry
signed with a key that was rotated away, reset or revoked is flagged with the entry that
retired that key. ``report.keys_in_force`` holds the authors' keys (base64) after the log.

The :class:`Report` has one :class:`Check` per property, each with the
:class:`Problem` list naming the entry (seq) and why; ``str(report)`` prints it.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Iterable, Mapping, Sequence

from werkbund.ledger import merkle
from werkbund.ledger.entries import (GENESIS_PREV, PLATFORM_AUTHOR, EntryError, canonical_bytes, decode_public_key,
                      encode_public_key, is_v2, statement_hash, validate_checkpoint, verify_checkpoint_signature,
                      verify_cosignature, verify_entry_signature)

OK, FAILED, SKIPPED, WARNING = "ok", "failed", "skipped", "warning"


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
    keys_in_force: dict[str, str] = field(default_factory=dict)  # author -> base64 key after the log

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


KEY_TYPES = ("key_rotated", "key_revoked", "key_registered", "key_reset")


class _Keys:
    """The keys in force while walking the log, and what happened to the earlier ones."""

    def __init__(self, initial: Mapping[str, object], authorities: set):
        self.current = {a: decode_public_key(k) for a, k in initial.items()}
        self.authorities = authorities
        self.members: set[str] = set()
        self.since: dict[str, int] = {}               # user -> seq that set the key in force
        self.revoked: dict[str, int] = {}             # user -> seq of the revocation in force
        self.former: dict[str, list] = {}             # user -> [(key, seq, "rotated away"|"revoked"|...)]
        self.resets: list[tuple[int, str, str]] = []  # (seq, user, reason) of operator resets

    def set(self, user: str, key, seq: int, how: str = "rotated away") -> None:
        if user in self.current:
            self.former.setdefault(user, []).append((self.current[user], seq, how))
        self.current[user], self.since[user] = key, seq
        self.revoked.pop(user, None)

    def why_not(self, entry: dict, signature) -> str:
        """Why ``entry`` does not verify with its author's key in force (for the message)."""
        author = entry["author"]
        for key, seq, how in reversed(self.former.get(author, [])):
            if verify_entry_signature(entry, signature, key):
                return f"it is signed with {author}'s key {how} at entry {seq}"
        if author in self.revoked:
            return f"{author}'s key was revoked at entry {self.revoked[author]}"
        others = [a for a, k in self.current.items()
                  if a != author and verify_entry_signature(entry, signature, k)]
        return f"it is {others[0]}'s signature" if others else ""

    def learn(self, entry: dict, check: Check, seq: int) -> None:
        """Take the key a platform-signed task_created/joined names; follow left entries."""
        payload, kind = entry["payload"], entry["type"]
        if entry["author"] not in self.authorities:
            return
        user = payload.get("creator" if kind == "task_created" else "user")
        if kind == "left":
            self.members.discard(user)
            return
        if not isinstance(user, str) or "public_key" not in payload:
            return
        was_member = user in self.members
        self.members.add(user)
        named = payload["public_key"]
        if named is None:
            return
        try:
            key = decode_public_key(named)
        except (EntryError, ValueError, TypeError):
            check.fail(f"entry {seq}: {kind} names no valid public key for {user}", seq)
            return
        held = self.current.get(user)
        if held is not None and (was_member or user in self.since) and encode_public_key(held) != named:
            check.fail(f"entry {seq}: {kind} names another key for {user} than the one in force "
                       f"since entry {self.since.get(user, '0')}; a key changes only by key_rotated", seq)
            return
        if held is None and (user in self.revoked or user in self.former):  # e.g. left, then joined again
            retired = self.revoked.get(user, self.former.get(user, [(None, None)])[-1][1])
            check.fail(f"entry {seq}: {kind} names a key for {user}, whose key was retired at entry "
                       f"{retired}; after that only an operator key_reset (shown as such) sets one", seq)
            return
        if held is None or encode_public_key(held) != named:
            if held is not None:  # the key given as at entry 0 is older than the log says
                self.current.pop(user)
            self.set(user, key, seq)
        else:
            self.since.setdefault(user, seq)

    def change(self, entry: dict, check: Check, seq: int) -> None:
        """Apply a key_rotated, key_revoked or key_registered entry whose signature verified."""
        payload, author, kind = entry["payload"], entry["author"], entry["type"]
        subject = payload.get("subject", author)
        named = payload.get("public_key")
        if kind == "key_rotated":
            if subject != author:
                check.fail(f"entry {seq}: {author} may not change the key of {subject}; only the "
                           "holder of the old key rotates it", seq)
                return
            try:
                self.set(subject, decode_public_key(named), seq)
            except (EntryError, ValueError, TypeError):
                check.fail(f"entry {seq}: key_rotated carries no valid public_key", seq)
        elif kind == "key_revoked":
            if subject != author and author not in self.authorities:
                check.fail(f"entry {seq}: {author} may not revoke the key of {subject}", seq)
                return
            held = self.current.get(subject)
            if named is not None and (held is None or named != encode_public_key(held)):
                check.fail(f"entry {seq}: revokes a key that is not {subject}'s current key", seq)
                return
            if held is not None:
                self.former.setdefault(subject, []).append((held, seq, "revoked"))
                self.current.pop(subject)
            self.revoked[subject] = seq
        elif kind == "key_reset":  # the operator's out-of-band reset of a lost key
            if author not in self.authorities:
                check.fail(f"entry {seq}: only the platform operator resets keys, not {author}", seq)
                return
            try:
                key = decode_public_key(named)
            except (EntryError, ValueError, TypeError):
                check.fail(f"entry {seq}: key_reset carries no valid public_key", seq)
                return
            self.set(subject, key, seq, "replaced by an operator reset")
            self.resets.append((seq, subject, str(payload.get("reason") or "")))
        else:  # key_registered: the platform vouches for a new key where none is in force
            if author not in self.authorities:
                check.fail(f"entry {seq}: only the platform registers keys, not {author}", seq)
            elif subject in self.current and subject in self.since:
                check.fail(f"entry {seq}: registers a new key for {subject} while the key set at "
                           f"entry {self.since[subject]} is in force; a key changes only by "
                           "key_rotated", seq)
            elif subject in self.former or subject in self.revoked:
                check.fail(f"entry {seq}: registers a new key for {subject}, whose key was retired "
                           "before; after that only an operator key_reset (shown as such) sets one",
                           seq)
            else:
                try:
                    self.current.pop(subject, None)
                    self.set(subject, decode_public_key(named), seq)
                except (EntryError, ValueError, TypeError):
                    check.fail(f"entry {seq}: key_registered carries no valid public_key", seq)


def _check_signatures(entries, keys, authorities, check: Check) -> _Keys:
    """Check every signature, following the key history in the log; return the keys' state."""
    state = _Keys(keys, authorities)
    changes = 0
    for entry, signature in entries:
        seq, author = entry["seq"], entry["author"]
        key = state.current.get(author)
        if key is None:
            why = (f"{author}'s key was revoked at entry {state.revoked[author]}"
                   if author in state.revoked else f"no public key is known for author {author}")
            check.fail(f"entry {seq}: {why}", seq)
            continue
        if not verify_entry_signature(entry, signature, key):
            why = state.why_not(entry, signature)
            check.fail(f"entry {seq}: signature does not verify with {author}'s key"
                       + (f" ({why})" if why else ""), seq)
            continue
        if entry["type"] in KEY_TYPES:
            changes += 1
            state.change(entry, check, seq)
        elif entry["type"] in ("task_created", "joined", "left"):
            state.learn(entry, check, seq)
    if check.ok:
        check.detail = f"{len(entries)} entries signed by their authors" + (
            f", following {changes} key change(s)" if changes else "")
    return state


def keys_in_force(entries: Sequence[tuple[dict, bytes | str]], keys: Mapping[str, object],
                  authorities: Iterable[str] = (PLATFORM_AUTHOR,)) -> dict:
    """The authors' keys (base64) in force after ``entries``, following the key history in them
    (e.g. the entries before one whose signature is to be checked on its own)."""
    state = _check_signatures(list(entries), keys, set(authorities), Check("signatures"))
    return {author: encode_public_key(key) for author, key in state.current.items()}


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


def _check_statements(good, check: Check) -> None:
    """A v2 statement is signed without a seq, so the log could show it twice (a replay that would
    count one update or vote twice); the platform never appends one again, so a repeat is flagged."""
    first: dict[str, int] = {}
    for entry, _ in good:
        if is_v2(entry):
            seen = first.setdefault(statement_hash(entry), entry["seq"])
            if seen != entry["seq"]:
                check.fail(f"entry {entry['seq']} repeats the statement of entry {seen} (a replayed statement)",
                           entry["seq"])
    if check.ok:
        check.detail = f"{len(first)} statement(s) sequenced by the log, none twice"


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
    _check_statements(good, report.new("statements unique"))

    sigs = report.new("signatures")
    final_keys, resets = {}, []
    try:
        state = _check_signatures(good, keys, set(authorities), sigs)
        final_keys, resets = state.current, state.resets
    except (EntryError, ValueError) as exc:
        sigs.fail(f"the key directory is unusable: {exc}")
    report.keys_in_force = {author: encode_public_key(key) for author, key in final_keys.items()}
    if resets:
        check = report.new("operator key resets")
        check.status = WARNING
        check.detail = "; ".join(f"entry {seq}: the platform operator reset {user}'s key"
                                 + (f" ({reason})" if reason else "") for seq, user, reason in resets)

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
