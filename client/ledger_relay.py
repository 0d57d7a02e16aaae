"""Statements riding on updates, proofs riding on the broadcast: a round's ledger work in one request.

The direct path (:class:`~werkbund.client.ledger.LedgerChannel`) costs every participant two
requests a round, its append and its audit. Here (``docs/ledger.md``, "Statements riding on updates"):

* a participant signs its ``update_submitted`` statement and sends it, with its cosignature of the
  checkpoint it verified last, in the update's header (:meth:`RelayedLedger.statement_for_update`);
* the aggregator checks the statement against the sender's key from the verified ledger
  (:meth:`~RelayedLedger.check_relayed`), and appends the round's statements, its own among them,
  with one ``ledger_relay`` request; the one after the aggregate also signs the head and proves it
  (:meth:`~RelayedLedger.flush_relay`);
* the next broadcast carries those proofs (``ledger_receipts``); a participant checks them against
  the platform key it pinned from the platform itself (:meth:`~RelayedLedger.take_receipts`).

The aggregator is only a courier. A participant whose statement was not relayed, or whose proofs
are missing or do not verify, appends and audits directly, and that direct answer decides; so an
aggregator can delay a statement by a round but never keep it off the log or forge a proof.
"""
from __future__ import annotations

import logging

from werkbund.ledger import entries as E
from werkbund.client.ledger import LedgerChannel, LedgerError, check_audit, check_promise
from werkbund.platform.command_schemas import LedgerRelayParams, validate_params
from werkbund.platform.errors import InvalidInput

log = logging.getLogger("werkbund.ledger")

# an update's statement is about 500 bytes (2 kB with DP figures); one participant's statement must not make
# the round's relay, which carries all of them, large
MAX_RELAYED_STATEMENT_BYTES = 64 * 1024


class _Unusable(Exception):
    """The relayed proofs cannot settle this member's audit: it audits directly."""


class RelayedLedger(LedgerChannel):
    """The relay methods of a task handle, on top of the direct ones."""

    def _relay_state(self) -> dict:
        state = self._ledger_state()
        if "pending" not in state:
            # pending: statements sent with updates, not yet seen on the log; queue: the aggregator's
            # statements to relay; cosigns: its members' cosignatures to relay; placed: where the relayed
            # statements of members went since the last audit (signature -> seq, prev); keys: member keys
            state.update(pending=[], queue=[], cosigns={}, placed={}, keys=None)
        return state

    # ------------------------------------------------------------ participant
    def statement_for_update(self, type: str, payload: dict) -> dict:
        """The header fields that carry a signed ``type`` statement (and the cosignature of the checkpoint
        verified last) with the message; the statement waits for its receipt on the next broadcast."""
        if not self.ledger_enabled:
            raise LedgerError("no identity key: register with `werkbund register` to sign ledger entries")
        state = self._relay_state()
        again = [p for p in state["pending"] if (p[0]["type"], p[0]["payload"]) == (type, payload)]
        if again:  # the same update sent again (its round asked again): the same statement, not a second one
            statement, signature = again[-1]
        else:
            statement = E.make_statement(self.task, type, self.name, payload)
            signature = E.encode_signature(E.sign_statement(statement, self.user.identity))
            state["pending"].append((statement, signature))
        fields = {"ledger_statement": statement, "ledger_signature": signature}
        if state["cosign"] is not None:  # (not sent again: an aggregator that drops it costs no proof)
            fields["ledger_cosign"], state["cosign"] = state["cosign"], None
        return fields

    def take_receipts(self, receipts) -> dict | None:
        """Settle the statements sent with updates against the receipts a broadcast carried: each one
        placed and proven included in a checkpoint signed with the pinned platform key, that checkpoint
        consistent with the one verified before. Whatever the receipts do not settle is settled directly
        (the statement appended by this member, then one audit), and a direct failure raises
        :class:`LedgerError`. Returns what the audit said, or None when there was nothing to prove."""
        state = self._relay_state()
        pending, state["pending"] = state["pending"], []
        receipts = receipts if isinstance(receipts, dict) else {}
        proofs, relayed = {}, []
        for statement, signature in pending:
            try:
                seq, prev, proof = _receipt(receipts, signature)
                entry = E.sequence(statement, seq, prev)
                seq, leaf = entry["seq"], E.entry_leaf_hash(entry).hex()
                proofs[seq] = proof
            except (E.EntryError, KeyError, IndexError, TypeError, ValueError):
                self._append_directly(state, statement, signature)  # not relayed (late, dropped, mangled)
                continue
            relayed.append((statement, signature, (seq, leaf)))
            state["own"].append((seq, leaf))
        start = state["proven"] if state["seen"] is not None else 0
        fresh = state["own"][start:]
        if not fresh:
            return None
        if state["platform_key"] is None:  # pinned from the platform's own answer, never from the courier
            state["platform_key"] = self.transport.call("ledger_audit", task=self.task, seqs=[])["platform_key"]
        try:
            if any(seq not in proofs for seq, _ in fresh):
                raise _Unusable("the receipts do not prove every own entry")
            seen = state["seen"]
            consistency = None
            if seen is not None:
                consistency = [] if seen["size"] == receipts["checkpoint"]["size"] else next(
                    (c.get("proof") for c in receipts.get("consistency") or ()
                     if isinstance(c, dict) and c.get("old_size") == seen["size"]), None)
                if consistency is None:
                    raise _Unusable(f"the receipts prove nothing from checkpoint {seen['size']}")
            answer = {"checkpoint": receipts["checkpoint"], "signature": receipts["signature"],
                      "platform_key": state["platform_key"], "consistency": consistency,
                      "inclusion": [proofs[seq] for seq, _ in fresh]}
            cp = check_audit(answer, self.task, state["platform_key"], fresh, seen)
        except (_Unusable, LedgerError, E.EntryError, KeyError, TypeError, ValueError) as exc:
            log.info("ledger: the relayed receipts do not settle this round (%s); auditing directly", exc)
            for statement, signature, spot in relayed:  # where the platform itself says they are
                state["own"].remove(spot)
                self._append_directly(state, statement, signature)
            return self.audit_ledger()
        self._audited(state, cp, start + len(fresh))
        return {"size": cp["size"], "root": cp["root"], "own_entries": len(state["own"]), "relayed": True}

    def _append_directly(self, state: dict, statement: dict, signature: str) -> None:
        """Append a statement this member signed (the same one again: the log answers where it already is)."""
        result = self.transport.call("ledger_append", task=self.task, statement=statement, signature=signature)
        check_promise(result, statement, state["platform_key"])
        state["platform_key"] = result["platform_key"]
        state["own"].append((result["seq"], result["leaf_hash"]))

    # ------------------------------------------------------------- aggregator
    def check_relayed(self, sender: str, type: str, number: int, statement, signature) -> dict | str:
        """The payload of ``sender``'s statement, once it is a well-formed ``type`` statement of this task
        for round ``number`` signed with the key the verified ledger gives ``sender`` (read once, again
        when a signature fails: a key may have been rotated); it is queued for the next relay. Otherwise
        the reason it is refused (a string)."""
        state = self._relay_state()
        try:
            data = E.statement_bytes(statement)  # (canonicalized once: for its size and its signature)
            E.decode_signature(signature)
        except E.EntryError as exc:
            return f"the update's ledger statement is malformed: {exc}"
        if len(data) > MAX_RELAYED_STATEMENT_BYTES:
            return (f"the update's ledger statement has {len(data)} bytes; a relayed statement may have at most "
                    f"{MAX_RELAYED_STATEMENT_BYTES}")
        if (statement["task"], statement["author"], statement["type"]) != (self.task, sender, type):
            return f"the update's ledger statement is not a {type} statement of {sender} in this task"
        said = statement["payload"].get("round")
        if not isinstance(said, int) or isinstance(said, bool) or said != number:
            return f"the update's ledger statement is for round {statement['payload'].get('round')!r}, not {number}"
        try:  # what the platform would refuse (a NUL, a number JSON cannot hold) must not reach the relay,
            # where it would sink the whole request
            validate_params("ledger_relay", LedgerRelayParams,
                            {"task": self.task, "items": [{"statement": statement, "signature": signature}]})
        except InvalidInput as exc:
            return f"the update's ledger statement would be refused by the platform: {exc}"
        for fresh in (False, True):
            if state["keys"] is None or fresh:
                state["keys"] = self.ledger_identity_keys()
            key = state["keys"].get(sender)
            if key is not None and E.verify_statement_bytes(data, signature, key):
                state["queue"].append({"statement": statement, "signature": signature})
                return dict(statement["payload"])
        return f"the update's ledger statement is not signed with {sender}'s key on the ledger"

    def relay_cosign(self, member: str, cosign) -> None:
        """Keep a member's cosignature (sent with its update) for the next relay, where the platform checks
        it against the member's key; one that is not even shaped like a cosignature is dropped here, since
        the relay's parameters would be refused as a whole."""
        if cosign is None:  # (none yet: a first update)
            return
        try:
            cosign = {"size": cosign["size"], "signature": cosign["signature"]}
            validate_params("ledger_relay", LedgerRelayParams,
                            {"task": self.task, "cosigns": [{"member": member, **cosign}]})
        except (InvalidInput, KeyError, TypeError) as exc:
            log.warning("ledger: %s's cosignature is malformed, not relayed: %s", member, exc)
            return
        self._relay_state()["cosigns"][member] = cosign

    def queue_entry(self, type: str, payload: dict) -> None:
        """Sign an own statement now and append it with the next relay (in order, before what follows)."""
        if not self.ledger_enabled:
            raise LedgerError("no identity key: register with `werkbund register` to sign ledger entries")
        statement = E.make_statement(self.task, type, self.name, payload)
        self._relay_state()["queue"].append(
            {"statement": statement, "signature": E.encode_signature(E.sign_statement(statement, self.user.identity))})

    def relay_queue(self) -> list[dict]:
        """The signed statements waiting for the next relay (JSON: the aggregator's checkpoint keeps them)."""
        return list(self._relay_state()["queue"])

    def restore_relay_queue(self, items: list) -> None:
        """Take back statements kept by a checkpoint (a resumed aggregator relays them; one already on the
        log keeps its place). Only well-formed signed statements of this task are taken."""
        queue = self._relay_state()["queue"]
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("statement"), dict) \
                    and item["statement"].get("task") == self.task and isinstance(item.get("signature"), str):
                queue.append({"statement": item["statement"], "signature": item["signature"]})

    def flush_relay(self, audit: bool = False, record: dict | None = None) -> dict | None:
        """Append the queued statements in one request. With ``audit``: the signed head covering them, this
        member's own entries proven in it (:func:`check_audit`), and the receipts for the members whose
        statements were relayed since the last audit (for the next broadcast). Returns the receipts.
        ``record``: a round's record (``record_round``'s parameters but the task), stored with them."""
        state = self._relay_state()
        items, state["queue"] = state["queue"], []
        cosigns = [{"member": m, **c} for m, c in state["cosigns"].items()]
        state["cosigns"] = {}
        if state["cosign"] is not None:
            cosigns.append({"member": self.name, **state["cosign"]})
        if not items and not audit and record is None:
            return None
        params = {"task": self.task, "items": items, "cosigns": cosigns}
        if record is not None:
            params["record"] = record
        start = state["proven"] if state["seen"] is not None else 0
        asked = [seq for seq, _ in state["own"][start:]] + [spot["seq"] for spot in state["placed"].values()]
        if audit:  # (the entries this relay appends come with their proofs)
            sizes = {c["size"] for c in cosigns if isinstance(c.get("size"), int)}
            if state["seen"] is not None:
                sizes.add(state["seen"]["size"])
            params["audit"] = {"seqs": asked, "old_sizes": sorted(sizes)}
        answer = self.transport.call("ledger_relay", **params)
        try:
            if state["platform_key"] is not None and answer["platform_key"] != state["platform_key"]:
                raise LedgerError("the platform's ledger key changed since you first saw it")
            state["platform_key"] = answer["platform_key"]
            proofs = dict(zip(asked, answer["inclusion"], strict=True)) if audit else {}
            self._placed(state, items, answer["results"], proofs)
            if not audit:
                return None
            fresh, seen = state["own"][start:], state["seen"]
            consistency = None if seen is None else next(
                (c["proof"] for c in answer["consistency"] if c["old_size"] == seen["size"]), None)
            checked = {"checkpoint": answer["checkpoint"], "signature": answer["signature"],
                       "platform_key": answer["platform_key"], "consistency": consistency,
                       "inclusion": [proofs.get(seq) for seq, _ in fresh]}
            cp = check_audit(checked, self.task, state["platform_key"], fresh, seen)
        except (KeyError, TypeError, ValueError, E.EntryError) as exc:
            raise LedgerError(f"the platform's answer to the ledger relay is malformed: {exc!r}") from None
        self._audited(state, cp, start + len(fresh))
        placed, state["placed"] = state["placed"], {}
        return {"checkpoint": answer["checkpoint"], "signature": answer["signature"],
                "consistency": answer["consistency"], **_receipt_table(placed, proofs)}

    def _placed(self, state: dict, items: list, results: list, proofs: dict) -> None:
        """Note where the platform put each relayed statement (own ones: to prove; members': for their
        receipts), after checking that it is that statement; the proofs of this relay's entries to ``proofs``."""
        for item, result in zip(items, results, strict=True):
            statement = item["statement"]
            if not isinstance(result, dict) or "entry" not in result:
                why = result.get("error") if isinstance(result, dict) else "no answer"
                if statement["author"] == self.name:
                    raise LedgerError(f"the platform refused this aggregator's {statement['type']} statement: {why}")
                log.warning("ledger: %s's %s statement was not appended: %s", statement["author"],
                            statement["type"], why)
                continue
            entry = result["entry"]
            if E.statement_of(entry) != statement:
                raise LedgerError(f"the platform placed another statement where {statement['author']}'s "
                                  f"{statement['type']} statement should be")
            if "proof" in result:
                proofs[entry["seq"]] = result["proof"]
            if statement["author"] == self.name:
                state["own"].append((entry["seq"], E.entry_leaf_hash(entry).hex()))
            else:
                state["placed"][item["signature"]] = {"seq": entry["seq"], "prev": entry["prev"]}


# ------------------------------------------------------------- the receipts' layout
# A broadcast goes to every member, so its receipts are read by all of them: each relayed statement's place
# takes a few bytes, and the proofs' hashes, which a round's contiguous entries mostly share, are listed once.
RECEIPT_KEY_CHARS = 22  # of a statement's base64 signature: 132 bits name it among a round's statements


def _receipt_table(placed: dict, proofs: dict) -> dict:
    """``placed`` (signature -> seq, prev) and ``proofs`` (seq -> inclusion proof, hex) as receipts: each
    signature's first :data:`RECEIPT_KEY_CHARS` characters -> [seq, prev, the proof as indices into
    ``nodes``, or None], and ``nodes`` the distinct hashes of all the proofs."""
    index, table = {}, {}
    for signature, spot in placed.items():
        proof = proofs.get(spot["seq"])
        if proof is not None:
            proof = [index.setdefault(node, len(index)) for node in proof]
        table[signature[:RECEIPT_KEY_CHARS]] = [spot["seq"], spot["prev"], proof]
    return {"nodes": list(index), "placed": table}


def _receipt(receipts: dict, signature: str) -> tuple[int, str, list | None]:
    """The seq, prev and inclusion proof (hex) the receipts give for the statement signed ``signature``;
    KeyError, IndexError, TypeError or ValueError where they give none that can be read."""
    seq, prev, indices = receipts["placed"][signature[:RECEIPT_KEY_CHARS]]
    nodes = receipts["nodes"]
    if indices is None:
        return seq, prev, None
    if not isinstance(nodes, list) or not all(isinstance(i, int) and 0 <= i < len(nodes) for i in indices):
        raise ValueError("the receipt's proof names hashes the receipts do not hold")
    return seq, prev, [nodes[i] for i in indices]
