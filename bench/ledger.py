"""Ledger throughput against the bare primitives measured in the same run.

    .venv/bin/python bench/ledger.py                       # 500 appends, 100 rounds x 20 participants
    .venv/bin/python bench/ledger.py --appends 1000 --rounds 100 --participants 20 --db sqlite://
    .venv/bin/python bench/ledger.py --big 0                # skip the 10,000-entry log

* primitives: sha256 of a typical canonical entry, Ed25519 sign and verify (per second);
* appends per second through the platform's ledger service on SQLite: a member's entry
  (signature checked against the registered key, seq/prev against the head, stored, new
  checkpoint computed and signed), and a platform-authored one;
* inclusion and consistency proofs per second, from the service with its cached trees
  (:mod:`werkbund.platform.ledger.tree_cache`), from the service rebuilding the tree from the
  database for every request (as it did before the cache), and from an in-memory tree; then
  the same, and platform appends, on a log bulk-loaded to ``--big`` entries;
* verification time of a task of ``rounds`` x (1 round_started + ``participants``
  update_submitted + 1 aggregate_published) entries with ``verify_log``, next to what its
  signature checks alone cost at the measured Ed25519 rate.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from werkbund.platform.db import Database, sqlite_url
from werkbund.ledger import entries as E
from werkbund.ledger import merkle
from werkbund.ledger.verify import verify_log
from werkbund.platform.ledger.store import LedgerEntry
from werkbund.platform.ledger.tree_cache import TreeCache
from werkbund.platform.service import PlatformService


def rate(fn, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - start)


def sample_entry(seq: int = 7, author: str = "participant-03") -> dict:
    return E.make_entry("turbines", "update_submitted", author, seq, "ab" * 32,
                        {"round": 12, "sha256": "cd" * 32, "size": 431_224, "n_samples": 898,
                         "train_loss": 0.3121, "validation": {"loss": 0.33, "accuracy": 0.91, "n_test": 225}})


def primitives(n: int) -> dict:
    key = Ed25519PrivateKey.generate()
    data = E.ENTRY_PREFIX + E.canonical_bytes(sample_entry())
    sig = key.sign(data)
    pub = key.public_key()
    return {"entry_bytes": len(data), "sha256_per_s": rate(lambda i: hashlib.sha256(data).digest(), n * 20),
            "ed25519_sign_per_s": rate(lambda i: key.sign(data), n),
            "ed25519_verify_per_s": rate(lambda i: pub.verify(sig, data), n)}


def service_rates(db_url: str, appends: int, proofs: int, big: int = 0) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="werkbund-bench-"))
    service = PlatformService(Database(db_url or sqlite_url(tmp / "bench.sqlite")), ledger_key=tmp / "key.pem")
    for name in ("alice", "bob"):
        service.register(name, f"{name}-password-1", name)
    key = Ed25519PrivateKey.generate()
    service.ledger.set_identity_key("bob", E.encode_public_key(key))
    service.create_task("alice", "bench", {"algorithm": "neural_network", "quorum": 1})
    service.join_task("bob", "bench")
    ledger = service.ledger

    def member_append(i):
        head = ledger.head("bob", "bench")
        entry = E.make_entry("bench", "update_submitted", "bob", head["size"], head["prev"],
                             {"round": i, "sha256": "cd" * 32, "n_samples": 100})
        ledger.append("bob", "bench", entry, E.encode_signature(E.sign_entry(entry, key)))

    out = {"member_appends_per_s": rate(member_append, appends),
           "platform_appends_per_s": rate(lambda i: ledger.platform_append("bench", "maintenance",
                                                                            {"i": i}), appends // 5)}
    size = ledger.head("bob", "bench")["size"]
    out["log_size"] = size
    out.update(proof_rates(ledger, size, proofs, ""))
    tree = merkle.MerkleTree(E.entry_leaf_hash(item["entry"]) for item in ledger.entries("bob", "bench"))
    out["tree_inclusion_per_s"] = rate(lambda i: tree.inclusion_proof((i * 7919) % size), proofs * 10)
    out["tree_consistency_per_s"] = rate(lambda i: tree.consistency_proof(1 + (i * 7919) % (size - 1)), proofs * 10)
    if big > size:  # a long log: proofs and appends with and without the cached tree
        bulk_load(service, "bench", size, big)
        out["big_log_size"] = big
        out.update(proof_rates(ledger, big, proofs, "big_"))
        for label, capacity in (("cached", 256), ("uncached", 0)):
            ledger.trees = TreeCache(capacity)
            ledger.platform_append("bench", "maintenance", {"warm": label})
            out[f"big_platform_appends_{label}_per_s"] = rate(
                lambda i: ledger.platform_append("bench", "maintenance", {"i": i}), max(5, appends // 20))
        ledger.trees = TreeCache()
    service.db.dispose()
    return out


def proof_rates(ledger, size: int, proofs: int, prefix: str) -> dict:
    """Service proof rates with the cached trees and, as before the cache, rebuilding each time."""
    out = {}
    for label, capacity in (("", 256), ("uncached_", 0)):
        ledger.trees = TreeCache(capacity)
        n = proofs if not capacity else max(10, proofs // 10)
        out[f"{prefix}{label}service_inclusion_per_s"] = rate(
            lambda i: ledger.inclusion_proof("bob", "bench", (i * 7919) % size), n)
        out[f"{prefix}{label}service_consistency_per_s"] = rate(
            lambda i: ledger.consistency_proof("bob", "bench", 1 + (i * 7919) % (size - 1)), n)
    ledger.trees = TreeCache()
    out[f"{prefix}service_head_per_s"] = rate(lambda i: ledger.head("bob", "bench"), proofs)
    return out


def bulk_load(service, task: str, start: int, end: int) -> None:
    """Grow a log to ``end`` entries fast (direct inserts, correctly chained and hashed, signed
    by the platform) so proofs over a long log can be timed without waiting for the appends."""
    key = service.ledger.key
    with service.db.session() as s:
        prev = service.ledger._head(s, task)[1]
        for seq in range(start, end):
            entry = E.make_entry(task, "maintenance", E.PLATFORM_AUTHOR, seq, prev, {"bulk": seq})
            data = E.canonical_bytes(entry)
            prev = hashlib.sha256(data).hexdigest()
            s.add(LedgerEntry(task=task, seq=seq, author=entry["author"], type=entry["type"],
                              entry=data.decode(), signature=E.encode_signature(E.sign_entry(entry, key)),
                              leaf_hash=merkle.leaf_hash(data).hex(), entry_hash=prev))


def task_log(rounds: int, participants: int):
    platform = Ed25519PrivateKey.generate()
    keys = {f"p{j:02d}": Ed25519PrivateKey.generate() for j in range(participants)}
    keys["aggregator"] = Ed25519PrivateKey.generate()
    log, prev = [], E.GENESIS_PREV

    def add(type, author, payload, signer):
        nonlocal prev
        entry = E.make_entry("bench", type, author, len(log), prev, payload)
        log.append((entry, E.sign_entry(entry, signer)))
        prev = E.entry_hash(entry)

    add("task_created", "platform", {"creator": "aggregator", "definition_sha256": "00" * 32,
                                     "public_key": E.encode_public_key(keys["aggregator"])}, platform)
    for name in [k for k in keys if k != "aggregator"]:  # as the platform writes them: with the key
        add("joined", "platform", {"user": name, "public_key": E.encode_public_key(keys[name])}, platform)
    for r in range(rounds):
        add("round_started", "aggregator", {"round": r, "global_sha256": "11" * 32}, keys["aggregator"])
        for name in [k for k in keys if k != "aggregator"]:
            add("update_submitted", name, {"round": r, "sha256": "22" * 32, "n_samples": 500,
                                           "validation": {"loss": 0.3, "accuracy": 0.9}}, keys[name])
        add("aggregate_published", "aggregator", {"round": r, "sha256": "33" * 32}, keys["aggregator"])
    add("task_finished", "platform", {"model_sha256": "44" * 32}, platform)
    tree = merkle.MerkleTree(E.entry_leaf_hash(e) for e, _ in log)
    cp = E.make_checkpoint("bench", tree.size, tree.root())
    pub = {k: v.public_key() for k, v in keys.items()}
    pub["platform"] = platform.public_key()
    return log, pub, cp, E.sign_checkpoint(cp, platform), platform.public_key()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--appends", type=int, default=500)
    parser.add_argument("--proofs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--participants", type=int, default=20)
    parser.add_argument("--big", type=int, default=10_000,
                        help="also time proofs and appends on a log of this many entries (0: skip)")
    parser.add_argument("--db", help="SQLAlchemy URL (default: a SQLite file in a temporary folder)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = {"primitives": primitives(2000), "service": service_rates(args.db, args.appends, args.proofs, args.big)}
    log, keys, cp, sig, platform_key = task_log(args.rounds, args.participants)
    start = time.perf_counter()
    report = verify_log(log, keys, cp, sig, platform_key)
    elapsed = time.perf_counter() - start
    assert report.ok, str(report)
    result["verify"] = {"entries": len(log), "seconds": elapsed,
                        "signature_floor_s": len(log) / result["primitives"]["ed25519_verify_per_s"]}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    p, s, v = result["primitives"], result["service"], result["verify"]
    print(f"primitives ({p['entry_bytes']}-byte entry): sha256 {p['sha256_per_s']:,.0f}/s, "
          f"Ed25519 sign {p['ed25519_sign_per_s']:,.0f}/s, verify {p['ed25519_verify_per_s']:,.0f}/s")
    print(f"appends (SQLite, checkpoint signed each time, log grows to {s['log_size']}): member "
          f"{s['member_appends_per_s']:,.0f}/s, platform {s['platform_appends_per_s']:,.0f}/s")
    print(f"proofs (log of {s['log_size']}): inclusion {s['service_inclusion_per_s']:,.0f}/s, consistency "
          f"{s['service_consistency_per_s']:,.0f}/s from the service with cached trees (rebuilt per request "
          f"as before: {s['uncached_service_inclusion_per_s']:,.0f}/s and "
          f"{s['uncached_service_consistency_per_s']:,.0f}/s; a bare head read {s['service_head_per_s']:,.0f}/s); "
          f"in memory {s['tree_inclusion_per_s']:,.0f}/s and {s['tree_consistency_per_s']:,.0f}/s")
    if "big_log_size" in s:
        print(f"log of {s['big_log_size']}: inclusion {s['big_service_inclusion_per_s']:,.0f}/s, consistency "
              f"{s['big_service_consistency_per_s']:,.0f}/s cached; rebuilt per request "
              f"{s['big_uncached_service_inclusion_per_s']:,.1f}/s and "
              f"{s['big_uncached_service_consistency_per_s']:,.1f}/s; platform appends "
              f"{s['big_platform_appends_cached_per_s']:,.0f}/s cached, "
              f"{s['big_platform_appends_uncached_per_s']:,.1f}/s rebuilt")
    print(f"verify_log of {v['entries']} entries ({args.rounds} rounds x {args.participants} participants): "
          f"{v['seconds']:.3f} s (its {v['entries']} signature checks alone: {v['signature_floor_s']:.3f} s)")


if __name__ == "__main__":
    main()
