"""A round's statements appended in one request: the aggregator relays what its participants signed.

The fast path of a round on the ledger (``docs/ledger.md``, "Statements riding on updates"). A
participant signs its ``update_submitted`` statement and sends it with its update instead of
appending it itself; the task's creator (the aggregator) collects a round's statements and calls
``ledger_relay`` once with them, its own statements and the cosignatures its participants sent.
The platform checks every statement against its author's registered key, exactly as for an
author's own append, and sequences them in one transaction. With ``audit`` it signs the tree
head that covers them and answers with the inclusion proof of each seq asked for and the
consistency proofs from each checkpoint size a member saw last, which the aggregator forwards on
its next broadcast: a participant checks them against the platform's key it pinned itself, and
where anything is missing or does not verify it appends and audits directly (one request each),
so a relaying aggregator can delay a participant's statement but never keep it off the log.

A statement that cannot be appended (a bad signature, an author who is no member, a type the
author may not make) is refused on its own, with the reason in its slot of the answer; the
others are appended. Only the creator may relay.
"""
from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

from sqlalchemy import insert, select

from werkbund.ledger import entries as E
from werkbund.ledger import merkle
from werkbund.platform import access
from werkbund.platform.errors import InvalidInput, InvalidState, PermissionDenied
from werkbund.platform.ledger.store import (IdentityKey, LedgerCheckpoint, LedgerCosignature, LedgerEntry,
                                            loads_stored as _loads)
from werkbund.platform.tables import Membership, User

# a relayed statement was signed when its update left the participant and is appended once the round's
# updates are in, up to the task's round timeout later: it may be that old (never from the future)
RELAY_MAX_AGE = timedelta(hours=24)
FUTURE_SKEW = timedelta(minutes=10)


class StatementRelay:
    """``ledger_relay`` for :class:`~werkbund.platform.ledger.service.LedgerService`."""

    def relay(self, caller: str, task: str, items: list = (), cosigns: list = (), audit: dict | None = None) -> dict:
        """Append the creator's and its participants' signed statements (``items``: {"statement",
        "signature"}) in one transaction; store the members' cosignatures (``cosigns``: {"member",
        "size", "signature"}; one that does not verify is skipped); with ``audit`` ({"seqs",
        "old_sizes"}) sign the head that covers the log and prove ``seqs`` included in it and it
        consistent with each of ``old_sizes``. A round's worth costs a handful of queries, not a few per
        statement: keys, earlier copies, checkpoints and cosignatures are each read in one."""
        items, cosigns = list(items), list(cosigns)
        with self.writing() as s:
            row = access.task_row(s, task, lock=True)
            creator = row.creator.name
            if creator != caller:
                raise PermissionDenied(f"only the creator of task {task!r} relays its members' ledger statements")
            members = set(s.scalars(select(User.name).join(Membership, Membership.user_id == User.id)
                                    .where(Membership.task_id == row.id)))
            names = {i.get("statement", {}).get("author") for i in items if isinstance(i.get("statement"), dict)}
            names |= {c.get("member") for c in cosigns}
            names = {n for n in names if isinstance(n, str) and (n == creator or n in members)}
            keys = dict(s.execute(select(IdentityKey.user, IdentityKey.public_key)
                                  .where(IdentityKey.user.in_(names))).all()) if names else {}
            results = self._relay_items(s, task, creator, members, keys, items)
            skipped = self._relay_cosigns(s, task, keys, cosigns)
            answer = {"results": results, "platform_key": self.public_key, "cosigns_skipped": skipped}
            if audit is not None:
                answer.update(self._relay_audit(s, task, audit, results))
        return answer

    def _relay_items(self, s, task: str, creator: str, members: set, keys: dict, items: list) -> list[dict]:
        checked, results = [], []
        for item in items:
            try:
                statement, signature = item["statement"], E.encode_signature(E.decode_signature(item["signature"]))
                E.validate_statement(statement)
                author = statement["author"]
                if statement["task"] != task:
                    raise InvalidInput(f"the statement names task {statement['task']!r}, not {task!r}")
                if author != creator and author not in members:
                    raise PermissionDenied(f"{author} is not a member of task {task!r}")
                allowed = self.CREATOR_TYPES if author == creator else self.PARTICIPANT_TYPES
                if statement["type"] not in allowed:
                    raise PermissionDenied(f"{author} may not author {statement['type']} entries")
                _check_relayed_clock(statement)
                if keys.get(author) is None or not E.verify_statement_signature(statement, signature, keys[author]):
                    raise PermissionDenied(f"the statement's signature does not verify with {author}'s registered key")
            except (E.EntryError, InvalidInput, PermissionDenied, KeyError, TypeError) as exc:
                results.append({"error": str(exc) if not isinstance(exc, KeyError) else f"missing {exc}"})
                checked.append(None)
                continue
            results.append(None)
            checked.append((statement, signature))
        # a statement stored before (the answer to an earlier relay was lost) keeps its place
        signatures = [c[1] for c in checked if c is not None]
        stored = {r.signature: (r.entry, r.leaf_hash) for r in s.execute(
            select(LedgerEntry.signature, LedgerEntry.entry, LedgerEntry.leaf_hash).where(
                LedgerEntry.task == task, LedgerEntry.signature.in_(signatures)))} if signatures else {}
        size, prev = self._head(s, task)
        first, rows = size, []
        for i, pair in enumerate(checked):
            if pair is None:
                continue
            statement, signature = pair
            text, leaf = stored.get(signature, (None, None))
            if text is not None:
                entry = _loads(text)
                if E.statement_of(entry) == statement:
                    results[i] = {"entry": entry, "leaf_hash": leaf}
                    continue
            entry, data = E.sequenced(statement, size, prev)
            leaf, prev = merkle.leaf_hash(data).hex(), hashlib.sha256(data).hexdigest()
            rows.append({"task": task, "seq": size, "author": statement["author"], "type": statement["type"],
                         "entry": data.decode("utf-8"), "signature": signature, "leaf_hash": leaf, "entry_hash": prev})
            results[i] = {"entry": entry, "leaf_hash": leaf}
            stored[signature] = (rows[-1]["entry"], leaf)  # (the same statement twice in one relay: one entry)
            size += 1
        if rows:  # one INSERT of many rows, no ORM object each (100 members: about a quarter of the relay's cost)
            s.execute(insert(LedgerEntry), rows)
            _, stored_size = self.trees.tree(s, task)
            if stored_size != first + len(rows):
                raise InvalidState(f"the stored ledger of {task!r} has gaps (it was tampered with); "
                                   "it cannot be extended")
        return results

    @staticmethod
    def _relay_cosigns(s, task: str, keys: dict, cosigns: list) -> list[dict]:
        """Store each cosignature that verifies with its member's key against a stored checkpoint (one
        query for the checkpoints, one for the cosignatures stored already); name the others."""
        sizes = {c["size"] for c in cosigns}
        heads = {r.size: _loads(r.checkpoint) for r in s.scalars(select(LedgerCheckpoint).where(
            LedgerCheckpoint.task == task, LedgerCheckpoint.size.in_(sizes)))} if sizes else {}
        have = set(s.execute(select(LedgerCosignature.size, LedgerCosignature.member).where(
            LedgerCosignature.task == task, LedgerCosignature.size.in_(sizes))).all()) if sizes else set()
        skipped, rows = [], []
        for cosign in cosigns:
            member, size = cosign["member"], cosign["size"]
            if size not in heads:  # (a head no longer stored: not kept; the member's own checks catch that)
                continue
            try:
                good = keys.get(member) is not None and E.verify_cosignature(heads[size], cosign["signature"], keys[member])
            except E.EntryError:
                good = False
            if not good:
                skipped.append({"member": member, "reason": f"no cosignature of {member} for checkpoint {size}"})
            elif (size, member) not in have:
                rows.append({"task": task, "size": size, "member": member, "signature": cosign["signature"]})
                have.add((size, member))
        if rows:
            s.execute(insert(LedgerCosignature), rows)
        return skipped

    def _relay_audit(self, s, task: str, audit: dict, results: list) -> dict:
        """The signed head of the whole log, each of ``audit["seqs"]`` and each entry of ``results`` proven
        included in it (None: it cannot be), and the consistency proof from each of ``audit["old_sizes"]``."""
        row, tree, stored = self._signed_head(s, task)
        checkpoint = _loads(row.checkpoint)
        size = checkpoint["size"]
        provable = size <= stored

        def prove(seq):
            return [p.hex() for p in tree.inclusion_proof(seq, size)] if provable and seq < size else None

        inclusion = [prove(seq) for seq in audit.get("seqs") or ()]
        for result in results:
            if result is not None and "entry" in result:
                result["proof"] = prove(result["entry"]["seq"])
        consistency = [{"old_size": old, "proof": [p.hex() for p in tree.consistency_proof(old, size)]}
                       for old in sorted(set(audit.get("old_sizes") or ())) if provable and 0 < old <= size]
        return {"checkpoint": checkpoint, "signature": row.signature, "inclusion": inclusion,
                "consistency": consistency}


def _check_relayed_clock(statement: dict) -> None:
    when = datetime.fromisoformat(statement["timestamp"][:-1] + "+00:00")
    now = datetime.now(timezone.utc)
    if when - now > FUTURE_SKEW or now - when > RELAY_MAX_AGE:
        raise InvalidInput(f"statement timestamp {statement['timestamp']} is more than 10 minutes ahead "
                           "or more than a day old")
