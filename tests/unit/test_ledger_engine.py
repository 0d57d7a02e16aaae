"""Metadata before models, in one process: every update's hash goes on the ledger before the
update; the aggregator refuses bytes that do not match; the finished log verifies."""
import hashlib
import threading

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from werkbund.algorithms.arrays import decode_weights, encode_weights
from werkbund.algorithms.data.loading import load_dataset
from werkbund.algorithms.builtin.neural_network import ALGORITHM
from werkbund.algorithms.moments import feature_moments
from werkbund.client.api import register
from werkbund.client.transports.inproc import InProcPlatform
from werkbund.ledger.verify import verify_log


def lying(handle, data, n_samples=10, lie=True, told=None):
    """Publishes the hash of one update, then sends other bytes (or, with lie=False, the same)."""
    while True:
        message = handle.receive(timeout=30)
        if message is None or message.kind == "failed":
            return
        number = message.get("round")
        if message.kind == "final":
            return handle.send("final_eval", round=number, eval={})
        if message.kind == "skipped" and told is not None:
            told.append(message.get("reason"))
        if message.kind == "stats":
            handle.send("stats", round=number, **feature_moments(data.x))
        elif message.kind == "round":
            weights = decode_weights(message.payload)
            honest = encode_weights(weights)
            handle.publish_entry("update_submitted", {"round": number, "n_samples": n_samples,
                                                      "sha256": hashlib.sha256(honest).hexdigest()})
            if lie:
                weights[-1] = weights[-1] + 1.0
            handle.send("update", encode_weights(weights), round=number, n_samples=n_samples)


def test_an_update_that_does_not_match_its_published_hash_is_rejected_and_selection_skips():
    platform = InProcPlatform()
    users = {name: register(name, f"{name}-password", name, platform="inproc", inproc=platform,
                            identity=Ed25519PrivateKey.generate()) for name in ("alice", "bob", "mallory", "tiny")}
    users["alice"].create_task("t", {"quorum": 3, "rounds": 2, "epochs": 1, "round_timeout": 20,
                                     "min_updates": 1, "selection": {"min_samples": 50}})
    digits = load_dataset("builtin:digits")
    bob_data, mallory_data = digits.shard(1, 2), digits.shard(2, 2)
    users["bob"].join_task("t", bob_data.schema())
    users["mallory"].join_task("t", mallory_data.schema())
    users["tiny"].join_task("t", mallory_data.schema())
    outcome, told = {}, []

    def honest():
        train, test = bob_data.split(0.2, 0)
        outcome["bob"] = ALGORITHM.participant(users["bob"].participant("t"), train, test).run()

    threads = [threading.Thread(target=honest, daemon=True),
               threading.Thread(target=lying, args=(users["mallory"].participant("t"), mallory_data),
                                daemon=True),
               threading.Thread(target=lying, args=(users["tiny"].participant("t"), mallory_data),
                                kwargs={"n_samples": 5, "lie": False, "told": told}, daemon=True)]
    for t in threads:
        t.start()
    result = ALGORITHM.aggregator(users["alice"].aggregator("t")).run()
    for t in threads:
        t.join(timeout=60)
    assert result["task"]["status"] == "COMPLETE"
    rounds = users["alice"].rounds("t")
    assert rounds[0]["reported"] == ["bob"]
    assert "but ledger entry" in rounds[0]["rejected"]["mallory"]
    assert "published" in rounds[0]["rejected"]["mallory"]
    assert "at least 50" in rounds[0]["rejected"]["tiny"] and "at least 50" in told[0]
    assert "bob" in outcome

    bundle = users["bob"].transport.call("ledger_bundle", task="t")
    types = [item["entry"]["type"] for item in bundle["entries"]]
    assert types[:4] == ["task_created", "joined", "joined", "joined"]
    assert types.count("update_submitted") == 6 and types.count("round_started") == 2
    assert types.count("aggregate_published") == 2 and types[-1] == "task_finished"
    latest = bundle["latest"]
    report = verify_log([(i["entry"], i["signature"]) for i in bundle["entries"]], bundle["keys"],
                        latest["checkpoint"], latest["signature"], bundle["platform_key"],
                        cosignatures=latest["cosignatures"] or None)
    assert report.ok, str(report)
    final_sha = hashlib.sha256(users["bob"].get_model("t")[0]).hexdigest()
    assert bundle["entries"][-1]["entry"]["payload"]["model_sha256"] == final_sha
