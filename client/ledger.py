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

from werkbund.platform.errors import Conflict, WerkbundError
from werkbund.ledger import entries as E
from werkbund.ledger import merkle

log = logging.getLogger("werkbund.ledger")


class LedgerError(WerkbundError):
    """The ledger does not verify: the platform rewrote, dropped or forked it."""

    code = "ledger_error"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(bytes(data)).hexdigest()


def publish(transport, task: str, author: str, key, type: str, payload: dict,
            platform_key: str | None = None) -> dict:
    """Sign a statement (entry format v2) and append it in one request: the log gives it its seq
    and prev and answers with a promise signed by the platform key, so there is no head to read
    first and nothing to sign again when others append at the same moment. The answer is checked
    (:func:`check_promise`) before it is believed."""
    statement = E.make_statement(task, type, author, payload)
    signature = E.encode_signature(E.sign_statement(statement, key))
    result = transport.call("ledger_append", task=task, statement=statement, signature=signature)
    check_promise(result, statement, platform_key)
    return result


def check_promise(result: dict, statement: dict, platform_key: str | None = None) -> None:
    """The platform's answer to an append: a promise, signed with its key (``platform_key`` when
    pinned), that the returned entry (this very statement, at the promised seq) is leaf ``seq`` of
    every tree head it signs from now on. :meth:`LedgerChannel.audit_ledger` holds it to that."""
    promise = result.get("promise") or {}
    if platform_key is not None and result.get("platform_key") != platform_key:
        raise LedgerError("the platform's ledger key changed since you first saw it")
    try:
        signed = E.verify_promise_signature(promise, result.get("promise_signature"), result.get("platform_key"))
        entry = result["entry"]
        leaf = E.entry_leaf_hash(entry).hex()
    except (E.EntryError, KeyError, TypeError, ValueError) as exc:
        raise LedgerError(f"the platform's answer to an append is malformed: {exc}") from None
    if not signed:
        raise LedgerError("the promise for your entry is not signed by the platform key")
    if (E.statement_of(entry) != statement or entry["seq"] != promise["seq"] or leaf != promise["leaf_hash"]
            or promise["log"] != statement["task"] or (result["seq"], result["leaf_hash"]) != (entry["seq"], leaf)):
        raise LedgerError(f"the platform's promise (entry {promise.get('seq')}) is not your statement at that seq")


def check_audit(answer: dict, task: str, platform_key: str, own, seen: dict | None) -> dict:
    """Check a ``ledger_audit`` answer: the checkpoint's signature, that each of ``own`` ((seq, leaf
    hash) pairs, promised by the platform) is included in it, and that it is consistent with
    ``seen`` (the checkpoint verified before). Returns the checkpoint; raises :class:`LedgerError`."""
    cp = answer["checkpoint"]
    if answer["platform_key"] != platform_key:
        raise LedgerError("the platform's ledger key changed since you first saw it")
    if cp.get("log") != task or not E.verify_checkpoint_signature(cp, answer["signature"], platform_key):
        raise LedgerError(f"checkpoint of size {cp.get('size')} is not signed by the platform key for {task!r}")
    root = bytes.fromhex(cp["root"])
    for (seq, leaf), proof in zip(own, answer["inclusion"], strict=True):
        if proof is None or seq >= cp["size"]:
            raise LedgerError(f"the platform promised your entry {seq}, but checkpoint {cp['size']} does not "
                              "include it (a broken promise: the entry was dropped or the log rolled back)")
        try:
            merkle.verify_inclusion(bytes.fromhex(leaf), seq, cp["size"], [bytes.fromhex(p) for p in proof], root)
        except merkle.ProofError as exc:
            raise LedgerError(f"your entry {seq} is not included in checkpoint {cp['size']} where the platform "
                              f"promised it: {exc}") from None
    if seen is not None:
        if cp["size"] < seen["size"] or answer["consistency"] is None:
            raise LedgerError(f"checkpoint {cp['size']} is not consistent with checkpoint {seen['size']} seen "
                              "before: the log shrank (entries were dropped or rolled back)")
        try:
            merkle.verify_consistency(seen["size"], cp["size"], bytes.fromhex(seen["root"]), root,
                                      [bytes.fromhex(p) for p in answer["consistency"]])
        except merkle.ProofError as exc:
            raise LedgerError(f"checkpoint {cp['size']} is not consistent with checkpoint {seen['size']} "
                              f"seen before (the log was rewritten or forked): {exc}") from None
    return cp


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
    verified with :func:`~werkbund.ledger.verify.verify_log` (signatures along the key history,
    seq, prev links, Merkle root) trusting no member key from the platform's tables. With
    ``platform_key`` the platform must still sign with it; with ``seen`` (an earlier checkpoint
    of this log) the log must extend it. Returns (keys, the platform key); raises
    :class:`LedgerError` when the log does not verify."""
    from werkbund.ledger.verify import verify_log

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
            # own: (seq, leaf hash) of every entry this handle appended, as the platform promised;
            # proven: how many of them the checkpoint ``seen`` was shown to include (a later
            # checkpoint consistent with ``seen`` includes them too, so an audit proves only the
            # entries appended since); cosign: this member's cosignature of ``seen``, sent with the
            # next audit
            self._ledger = {"own": [], "proven": 0, "seen": None, "entries": [], "platform_key": None,
                            "cosign": None}
        return self._ledger

    def publish_entry(self, type: str, payload: dict) -> dict:
        """Sign ``payload`` as a statement of ``type`` with the user's key and append it (one
        request); the platform's promise is checked, pinning its key at first sight."""
        if not self.ledger_enabled:
            raise LedgerError("no identity key: register with `werkbund register` to sign ledger entries")
        state = self._ledger_state()
        result = publish(self.transport, self.task, self.name, self.user.identity, type, payload,
                         state["platform_key"])
        state["platform_key"] = result["platform_key"]
        state["own"].append((result["seq"], result["leaf_hash"]))
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

    def published_update(self, sender: str, number: int, at: int | None = None) -> dict | None:
        """The latest ``update_submitted`` payload of ``sender`` for round ``number`` (with its seq).
        ``at``: the seq the sender says its entry got; when the entries read before reach it, no request
        is made (a round's updates mostly arrive after all of their entries were appended, so one read
        serves many). Whatever ``at`` says, the entry is looked up, never taken from the sender."""
        cache = self._ledger_state()["entries"]
        if not (isinstance(at, int) and not isinstance(at, bool) and 0 <= at < len(cache)):
            cache.extend(item["entry"] for item in self.entries(len(cache)))
        for entry in reversed(cache):
            payload = entry.get("payload") or {}
            if (entry.get("type") == "update_submitted" and entry.get("author") == sender
                    and payload.get("round") == number):
                return {"seq": entry["seq"], **payload}
        return None

    def audit_ledger(self) -> dict:
        """One request: the latest checkpoint, proofs that the own entries appended since the last
        audit are in it where the platform promised them, and that it is consistent with the one
        verified last time (which included the earlier ones, so they still are: the cost of an
        audit does not grow with the task). The cosignature of the checkpoint verified last time
        rides on this request; the one verified now rides on the next."""
        state = self._ledger_state()
        start = state["proven"] if state["seen"] is not None else 0
        fresh, seen = state["own"][start:], state["seen"]
        answer = self.transport.call("ledger_audit", task=self.task, seqs=[seq for seq, _ in fresh],
                                     old_size=None if seen is None else seen["size"], cosign=state["cosign"])
        if state["platform_key"] is None:
            state["platform_key"] = answer["platform_key"]
        try:
            cp = check_audit(answer, self.task, state["platform_key"], fresh, seen)
        except (KeyError, TypeError, ValueError, E.EntryError) as exc:  # not a LedgerError: a malformed answer
            raise LedgerError(f"the platform's answer to the ledger audit is malformed: {exc!r}") from None
        self._audited(state, cp, start + len(fresh), sent=state["cosign"])
        return {"size": cp["size"], "root": cp["root"], "own_entries": len(state["own"])}

    def _audited(self, state: dict, cp: dict, proven: int, sent: dict | None = None) -> None:
        """Checkpoint ``cp`` verified, the first ``proven`` own entries proven in it: its cosignature goes
        with the next request, unless ``sent`` (the one this request carried, stored by the platform now)
        was already for the same head."""
        state["seen"], state["proven"] = cp, proven
        state["cosign"] = None if sent is not None and sent["size"] == cp["size"] else {
            "size": cp["size"], "signature": E.encode_signature(E.cosign_checkpoint(cp, self.user.identity))}


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
    from werkbund.ledger.verify import verify_log

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
    from werkbund.client import home_files

    bundle = user.transport.call("ledger_bundle", task=task)
    view = home_files.load_ledger_view(url, user.name, task)
    consistency = None
    if view is not None and view["checkpoint"]["size"] <= bundle["latest"]["checkpoint"]["size"]:
        consistency = user.transport.call("ledger_consistency", task=task, old_size=view["checkpoint"]["size"],
                                          new_size=bundle["latest"]["checkpoint"]["size"])["proof"]
    report = bundle_report(bundle, view, consistency, view.get("platform_key") if view else None)
    if report.ok:
        cp = bundle["latest"]["checkpoint"]
        home_files.save_ledger_view(url, user.name, task, {
            "platform_key": bundle["platform_key"], "checkpoint": cp, "signature": bundle["latest"]["signature"],
            "leaf_hashes": [entry_leaf(e) for e, _ in bundle_pairs(bundle)][:cp["size"]]})
        if user.identity is not None:
            sig = E.encode_signature(E.cosign_checkpoint(cp, user.identity))
            user.transport.call("ledger_cosign", task=task, size=cp["size"], signature=sig)
            report.new("cosigned").detail = f"you cosigned checkpoint {cp['size']}"
    return report, bundle
