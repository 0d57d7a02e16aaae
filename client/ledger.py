"""The member's side of the ledger: publish signed entries, check inclusion and consistency.

:class:`LedgerChannel` is mixed into the task handles of :mod:`werkbund.client.api`,
so the round engine reaches the ledger only through its channel
(``ledger_enabled``, ``publish_entry``, ``entries``, ``published_update``,
``audit_ledger``). A handle whose user has no identity key has ``ledger_enabled``
False and the engine runs without the ledger (as the Python API allows).
"""
from __future__ import annotations

import hashlib
import logging
import random
import time

from werkbund.platform.errors import Conflict, LedgerHeadMoved, WerkbundError
from werkbund.platform.ledger import entries as E
from werkbund.platform.ledger import merkle

log = logging.getLogger("werkbund.ledger")


class LedgerError(WerkbundError):
    """The ledger does not verify: the platform rewrote, dropped or forked it."""

    code = "ledger_error"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(bytes(data)).hexdigest()


def publish(transport, task: str, author: str, key, type: str, payload: dict) -> dict:
    """Sign and append one entry at the current head. When another append won, the refusal says
    where the log now ends and the entry is signed again there at once: every retry follows an entry
    that did land, so members appending together all get through, without sleeping. Only a refusal
    that names no new head (an older platform, a race inside its database) waits before asking again."""
    head, stalled = transport.call("ledger_head", task=task), 0
    while stalled < 40:
        entry = E.make_entry(task, type, author, head["size"], head["prev"], payload)
        signature = E.encode_signature(E.sign_entry(entry, key))
        try:
            result = transport.call("ledger_append", task=task, entry=entry, signature=signature)
        except LedgerHeadMoved as exc:
            if exc.head is not None and exc.head["size"] > head["size"]:
                head = exc.head  # the log grew: sign again where it ends now
                continue
            stalled += 1
            time.sleep(random.uniform(0.01, 0.05) * stalled)
            head = transport.call("ledger_head", task=task)
            continue
        except Conflict:
            stalled += 1
            time.sleep(random.uniform(0.01, 0.05) * stalled)
            head = transport.call("ledger_head", task=task)
            continue
        if result["leaf_hash"] != E.entry_leaf_hash(entry).hex():
            raise LedgerError(f"the platform stored entry {result['seq']} with another leaf hash")
        return {**result, "entry": entry}
    raise LedgerError(f"could not append to the ledger of {task!r}: the head kept moving")


def check_checkpoint(transport, task: str, platform_key: str, own, seen: dict | None) -> dict:
    """Fetch the latest checkpoint; check its signature, that each of ``own`` (seq -> leaf
    hash, as a dict or a list of pairs) is included, and that it is consistent with ``seen`` (an earlier checkpoint)."""
    latest = transport.call("ledger_checkpoint", task=task)
    cp = latest["checkpoint"]
    if latest["platform_key"] != platform_key:
        raise LedgerError("the platform's ledger key changed since you first saw it")
    if not E.verify_checkpoint_signature(cp, latest["signature"], platform_key):
        raise LedgerError(f"checkpoint of size {cp['size']} is not signed by the platform key")
    root = bytes.fromhex(cp["root"])
    for seq, leaf in sorted(own.items() if isinstance(own, dict) else own):
        proof = transport.call("ledger_inclusion", task=task, seq=seq, size=cp["size"])
        try:
            merkle.verify_inclusion(bytes.fromhex(leaf), seq, cp["size"],
                                    [bytes.fromhex(p) for p in proof["proof"]], root)
        except merkle.ProofError as exc:
            raise LedgerError(f"your entry {seq} is not included in checkpoint {cp['size']}: {exc}") from None
    if seen is not None:
        if cp["size"] < seen["size"]:
            raise LedgerError(f"checkpoint {cp['size']} is not consistent with checkpoint {seen['size']} seen "
                              "before: the log shrank (entries were dropped or rolled back)")
        proof = transport.call("ledger_consistency", task=task, old_size=seen["size"], new_size=cp["size"])
        try:
            merkle.verify_consistency(seen["size"], cp["size"], bytes.fromhex(seen["root"]), root,
                                      [bytes.fromhex(p) for p in proof["proof"]])
        except merkle.ProofError as exc:
            raise LedgerError(f"checkpoint {cp['size']} is not consistent with checkpoint {seen['size']} "
                              f"seen before (the log was rewritten or forked): {exc}") from None
    return latest


def _signed_key_change(transport, command: str, kind: str, user: str, old_key, payload: dict,
                       statement: bytes, params: dict, attempts: int) -> dict:
    """Sign one ``kind`` entry with ``old_key`` at the head of each of the user's task logs (and
    the key statement, for a user in no task) and send them together with ``command`` (the
    platform takes all or none; a moved head or a new task means signing again)."""
    proof = E.encode_signature(old_key.sign(statement))
    for attempt in range(attempts):
        items = []
        for head in transport.call("ledger_key_logs"):
            entry = E.make_entry(head["task"], kind, user, head["size"], head["prev"], payload)
            items.append({"entry": entry, "signature": E.encode_signature(E.sign_entry(entry, old_key))})
        try:
            return transport.call(command, entries=items, statement_signature=proof, **params)
        except Conflict:
            time.sleep(random.uniform(0.01, 0.05) * (1 + attempt))
    raise LedgerError(f"could not record {kind}: the ledger heads kept moving; try again")


def rotate_key(transport, user: str, old_key, new_key, attempts: int = 20) -> dict:
    """Replace ``user``'s identity key: ``key_rotated`` entries naming the new key, signed with
    the OLD key, on every log of the user."""
    new_pub, old_pub = E.encode_public_key(new_key), E.encode_public_key(old_key)
    payload = {"subject": user, "public_key": new_pub, "previous_key": old_pub}
    return _signed_key_change(transport, "rotate_identity_key", "key_rotated", user, old_key, payload,
                              E.key_statement("key_rotated", user, old_pub, new_pub),
                              {"public_key": new_pub}, attempts)


def revoke_key(transport, user: str, key, reason: str = "", attempts: int = 20) -> dict:
    """Revoke ``user``'s identity key (compromised): ``key_revoked`` entries signed with that
    very key on every log of the user. A lost key cannot sign: the operator resets it."""
    pub = E.encode_public_key(key)
    payload = {"subject": user, "public_key": pub, "reason": reason}
    return _signed_key_change(transport, "revoke_identity_key", "key_revoked", user, key, payload,
                              E.key_statement("key_revoked", user, pub, None, reason),
                              {"reason": reason}, attempts)


def verified_identity_keys(transport, task: str, platform_key: str | None = None,
                           seen: dict | None = None) -> tuple[dict[str, str], str]:
    """The members' identity keys (base64) in force at the end of ``task``'s log, as the log
    itself says: entries fetched, then the platform-signed checkpoint of exactly that size,
    verified with :func:`~werkbund.platform.ledger.verify.verify_log` (signatures along the key history,
    seq, prev links, Merkle root) trusting no member key from the platform's tables. With
    ``platform_key`` the platform must still sign with it; with ``seen`` (an earlier checkpoint
    of this log) the log must extend it. Returns (keys, the platform key); raises
    :class:`LedgerError` when the log does not verify."""
    from werkbund.platform.ledger.verify import verify_log

    pairs = [(i["entry"], i["signature"]) for i in transport.call("ledger_entries", task=task)]
    if not pairs:
        raise LedgerError(f"the ledger of task {task!r} is empty; it names nobody's key")
    latest = transport.call("ledger_checkpoint", task=task, size=len(pairs))
    key = platform_key or latest["platform_key"]
    if latest["platform_key"] != key:
        raise LedgerError("the platform's ledger key changed since you first saw it")
    report = verify_log(pairs, {E.PLATFORM_AUTHOR: key}, latest["checkpoint"], latest["signature"], key)
    if not report.ok:
        raise LedgerError(f"the ledger of task {task!r} does not verify, so no key can be taken from it: "
                          f"{report.problems[0]}")
    if seen is not None:
        leaves = [E.entry_leaf_hash(e) for e, _ in pairs]
        if len(leaves) < seen["size"] or merkle.MerkleTree(leaves).root(seen["size"]).hex() != seen["root"]:
            raise LedgerError(f"the ledger of task {task!r} does not extend checkpoint {seen['size']} seen "
                              "before (it was rewritten or forked)")
    return dict(report.keys_in_force), key


class LedgerChannel:
    """Ledger methods of a task handle (needs ``self.user``, ``self.transport``, ``self.task``)."""

    @property
    def ledger_enabled(self) -> bool:
        return getattr(self.user, "identity", None) is not None

    def _ledger_state(self) -> dict:
        if not hasattr(self, "_ledger"):
            # own: (seq, leaf hash) of every entry this handle appended; proven: how many of them the
            # checkpoint ``seen`` was shown to include (a later checkpoint consistent with ``seen``
            # includes them too, so an audit proves only the entries appended since)
            self._ledger = {"own": [], "proven": 0, "seen": None, "entries": [], "platform_key": None}
        return self._ledger

    def publish_entry(self, type: str, payload: dict) -> dict:
        """Sign ``payload`` as an entry of ``type`` with the user's key and append it."""
        if not self.ledger_enabled:
            raise LedgerError("no identity key: register with `werkbund register` to sign ledger entries")
        result = publish(self.transport, self.task, self.name, self.user.identity, type, payload)
        self._ledger_state()["own"].append((result["seq"], result["leaf_hash"]))
        return result

    def ledger_identity_keys(self) -> dict[str, str]:
        """The members' identity keys in force by this task's verified ledger (base64), with the
        platform key pinned at first sight and the log checked to extend what this handle saw."""
        state = self._ledger_state()
        keys, state["platform_key"] = verified_identity_keys(self.transport, self.task, state["platform_key"],
                                                             state["seen"])
        return keys

    def entries(self, start: int = 0) -> list[dict]:
        return self.transport.call("ledger_entries", task=self.task, start=start)

    def joined_members(self) -> list[str]:
        """Who joined the task, as the platform recorded it on the task's ledger (its own ``joined`` and
        ``left`` entries; members join and leave only before the task starts). The aggregator cannot
        write these entries, so a POM 2 roster checked against them binds it."""
        members: list[str] = []
        for item in self.entries():
            entry = item.get("entry") if isinstance(item, dict) else None
            if not isinstance(entry, dict) or entry.get("author") != E.PLATFORM_AUTHOR:
                continue
            user = (entry.get("payload") or {}).get("user")
            if entry.get("type") == "joined" and isinstance(user, str) and user not in members:
                members.append(user)
            elif entry.get("type") == "left" and user in members:
                members.remove(user)
        return sorted(members)

    def published_update(self, sender: str, number: int) -> dict | None:
        """The latest ``update_submitted`` payload of ``sender`` for round ``number`` (with its seq)."""
        cache = self._ledger_state()["entries"]
        cache.extend(item["entry"] for item in self.entries(len(cache)))
        for entry in reversed(cache):
            payload = entry.get("payload") or {}
            if (entry.get("type") == "update_submitted" and entry.get("author") == sender
                    and payload.get("round") == number):
                return {"seq": entry["seq"], **payload}
        return None

    def audit_ledger(self) -> dict:
        """Check that the own entries appended since the last audit are included in the latest
        checkpoint and that it is consistent with the one seen last time (which included the earlier
        ones, so they still are: the cost of an audit does not grow with the task); cosign."""
        state = self._ledger_state()
        if state["platform_key"] is None:
            state["platform_key"] = self.transport.call("ledger_checkpoint", task=self.task)["platform_key"]
        start = state["proven"] if state["seen"] is not None else 0
        fresh = state["own"][start:]
        latest = check_checkpoint(self.transport, self.task, state["platform_key"], fresh, state["seen"])
        cp = latest["checkpoint"]
        state["seen"], state["proven"] = cp, start + len(fresh)
        signature = E.encode_signature(E.cosign_checkpoint(cp, self.user.identity))
        self.transport.call("ledger_cosign", task=self.task, size=cp["size"], signature=signature)
        return {"size": cp["size"], "root": cp["root"], "own_entries": len(state["own"])}


# ------------------------------------------------------------------ verification (CLI and Python API)
def bundle_pairs(bundle: dict) -> list:
    """The (entry, signature) pairs of a ledger bundle."""
    return [(item.get("entry"), item.get("signature")) for item in bundle.get("entries", [])]


def entry_leaf(entry) -> str | None:
    """An entry's Merkle leaf hash (hex), or None for an entry that cannot be hashed."""
    try:
        return E.entry_leaf_hash(entry).hex()
    except (E.EntryError, TypeError, ValueError):
        return None


def bundle_report(bundle: dict, view: dict | None = None, consistency: list | None = None,
                  pinned_key: str | None = None):
    """Verify a ledger bundle: signatures, seq, prev links, Merkle root, the checkpoint; with
    ``view`` (what this member saw last time) also consistency and the entries seen before."""
    from werkbund.platform.ledger.verify import verify_log

    latest = bundle["latest"]
    platform_key = pinned_key or bundle["platform_key"]
    kwargs = {}
    if view is not None:
        kwargs = dict(previous_checkpoint=view["checkpoint"], previous_signature=view["signature"],
                      consistency_proof=consistency)
    report = verify_log(bundle_pairs(bundle), bundle["keys"], latest["checkpoint"], latest["signature"],
                        platform_key, cosignatures=latest.get("cosignatures") or None, **kwargs)
    if pinned_key and bundle["platform_key"] != pinned_key:
        report.new("platform key").fail(f"the platform key is now {bundle['platform_key']}, "
                                        f"not {pinned_key} as first seen")
    if view is not None:  # name the first entry that differs from what this member saw before
        check = report.new("entries seen before")
        leaves = [entry_leaf(e) for e, _ in bundle_pairs(bundle)]
        for seq, old in enumerate(view.get("leaf_hashes", [])):
            now = leaves[seq] if seq < len(leaves) else None
            if now != old:
                check.fail(f"entry {seq} " + ("is gone" if now is None else "differs from the one you saw")
                           + f" at checkpoint size {view['checkpoint']['size']}", seq)
                break
        if check.ok:
            check.detail = f"entries 0..{len(view.get('leaf_hashes', [])) - 1} unchanged since you saw them"
    return report


def verify_task_ledger(user, url: str | None, task: str) -> tuple:
    """Verify a task's ledger online as its member ``user`` (a ``werkbund.client.api.User``).

    Checks the bundle against what this member saw last time (kept under WERKBUND_HOME), remembers
    the new view when it verifies, and cosigns the checkpoint with the member's identity key.
    Returns (report, bundle).
    """
    from werkbund.client import state

    bundle = user.transport.call("ledger_bundle", task=task)
    view = state.load_ledger_view(url, user.name, task)
    consistency = None
    if view is not None and view["checkpoint"]["size"] <= bundle["latest"]["checkpoint"]["size"]:
        consistency = user.transport.call("ledger_consistency", task=task, old_size=view["checkpoint"]["size"],
                                          new_size=bundle["latest"]["checkpoint"]["size"])["proof"]
    report = bundle_report(bundle, view, consistency, view.get("platform_key") if view else None)
    if report.ok:
        cp = bundle["latest"]["checkpoint"]
        state.save_ledger_view(url, user.name, task, {
            "platform_key": bundle["platform_key"], "checkpoint": cp, "signature": bundle["latest"]["signature"],
            "leaf_hashes": [entry_leaf(e) for e, _ in bundle_pairs(bundle)][:cp["size"]]})
        if user.identity is not None:
            sig = E.encode_signature(E.cosign_checkpoint(cp, user.identity))
            user.transport.call("ledger_cosign", task=task, size=cp["size"], signature=sig)
            report.new("cosigned").detail = f"you cosigned checkpoint {cp['size']}"
    return report, bundle
