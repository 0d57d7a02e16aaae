"""Bad input over a real local platform server gets a typed 400 naming the problem, never a 500.

Each case is one that a fuzzer found returning 500 (issue 14): huge integers, JSON nested 1,000
deep, a wrong type for a parameter, a list where an object belongs.
"""
import json

import pytest
import requests

from werkbund.client.api import register
from werkbund.local_platform.server import LocalPlatformServer

SCHEMA = {"kind": "classification", "features": ["a"], "target": "y", "classes": [0, 1]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = LocalPlatformServer(f"sqlite:///{tmp_path_factory.mktemp('db') / 'p.sqlite'}").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def api(server):
    """Alice created task 'open' (CREATED) and 'run' (STARTED, bob in it); requests as bob and alice."""
    alice = register("alice", "alice-password", "acme", url=server.url)
    bob = register("bob", "bob-password", "beta", url=server.url)
    alice.create_task("open", {"quorum": 1})
    alice.create_task("run", {"quorum": 1})
    bob.join_task("run", SCHEMA)
    alice.aggregator("run").start()
    base = f"{server.url}/api/v1"
    tokens = {u: requests.post(f"{base}/login", json={"user": u, "password": f"{u}-password"}).json()["data"]["token"]
              for u in ("alice", "bob")}

    def call(command, body, user="bob", raw=False):
        kwargs = {"data": body, "headers": {"Content-Type": "application/json"}} if raw else {"json": body}
        kwargs.setdefault("headers", {})["Authorization"] = f"Bearer {tokens[user]}"
        return requests.post(f"{base}/call/{command}", **kwargs)

    call.base, call.tokens = base, tokens
    return call


def assert_invalid(response, *words):
    assert response.status_code == 400, (response.status_code, response.text)
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    for word in words:
        assert word in error["message"], error["message"]


def test_integers_beyond_2_to_the_53_in_a_definition(api):
    assert_invalid(api("create_task", {"task": "big", "definition": {"quorum": 1, "seed": 2**60}}, "alice"),
                   "2**53")
    assert_invalid(api("create_task", {"task": "big", "definition": {"quorum": 1, "layers": [[1, -2**64]]}},
                       "alice"), "2**53")
    assert api("task_info", {"task": "big"}).status_code == 404  # nothing was created


def test_json_nested_1000_deep(api):
    deep = '{"task": "deep", "definition": {"quorum": 1, "model": ' + "[" * 1000 + "]" * 1000 + "}}"
    assert_invalid(api("create_task", deep, "alice", raw=True), "nested")
    assert_invalid(api("task_info", "[" * 100000 + "]" * 100000, raw=True), "nested")
    assert api("task_info", {"task": "deep"}).status_code == 404


@pytest.mark.parametrize("n_samples", ["abc", 1e400, -1, 2**60, [3], True])
def test_n_samples_that_is_no_count_at_join(api, n_samples):
    body = json.dumps({"task": "open", "schema": dict(SCHEMA, n_samples=n_samples)}).replace("Infinity", "1e400")
    assert_invalid(api("join_task", body, raw=True), "n_samples")
    assert api("task_info", {"task": "open"}).json()["data"]["joined"] == 0


def test_a_list_as_model_metadata(api):
    for meta in ("[1, 2]", '"text"', "{not json", '{"a": ' + "[" * 1000 + "]" * 1000 + "}"):
        r = requests.put(f"{api.base}/tasks/run/model", data=b"model bytes",
                         headers={"Authorization": f"Bearer {api.tokens['alice']}", "X-Werkbund-Meta": meta})
        assert_invalid(r, "X-Werkbund-Meta")


def test_model_metadata_at_the_start_of_the_body_that_is_no_json_object_or_no_length(api):
    """A large model's metadata opens the body, its length in X-Werkbund-Meta-Bytes: a length that is no
    whole number, or more than the body, and a prefix that is no JSON object are clear 400s."""
    auth = {"Authorization": f"Bearer {api.tokens['alice']}"}
    for meta in (b"[1, 2]", b'"text"', b"{not json"):
        r = requests.put(f"{api.base}/tasks/run/model", data=meta + b"model bytes",
                         headers={**auth, "X-Werkbund-Meta-Bytes": str(len(meta))})
        assert_invalid(r, "X-Werkbund-Meta")
    for count in ("abc", "-1", "1e3", str(len(b"{}model bytes") + 1)):
        r = requests.put(f"{api.base}/tasks/run/model", data=b"{}model bytes",
                         headers={**auth, "X-Werkbund-Meta-Bytes": count})
        assert_invalid(r, "X-Werkbund-Meta-Bytes")


@pytest.mark.parametrize("name", ["status", "creator", "algorithm", "search"])
@pytest.mark.parametrize("value", [["CREATED"], {"a": 1}, 7])
def test_lists_or_objects_as_filters(api, name, value):
    assert_invalid(api("list_tasks", {name: value}), name)


@pytest.mark.parametrize("command, params, named", [
    ("identity_key", {"user": ["alice"]}, "user"),
    ("identity_key", {"user": {"a": 1}}, "user"),
    ("key_history", {"user": ["alice"]}, "user"),
    ("ledger_entries", {"task": "run", "start": "abc"}, "start"),
    ("ledger_entries", {"task": "run", "end": [1]}, "end"),
    ("ledger_entries", {"task": "run", "start": 2**64}, "2**53"),
    ("ledger_checkpoint", {"task": "run", "size": ["1"]}, "size"),
    ("ledger_checkpoint", {"task": "run", "size": {"a": 1}}, "size"),
    ("ledger_cosign", {"task": "run", "size": "x", "signature": "AAAA"}, "size"),
    ("ledger_cosign", {"task": "run", "size": 1, "signature": [1]}, "signature"),
    ("ledger_inclusion", {"task": "run", "seq": 1.5}, "seq"),
    ("task_info", {"task": ["run"]}, "task"),
    ("finish_task", {"task": "run", "reason": {"why": 1}}, "reason"),
    ("record_round", {"task": "run", "number": 0, "reported": "bob"}, "reported"),
    ("rotate_identity_key", {"public_key": "x", "entries": "no list"}, "entries"),
    ("fail_task", {"task": "open", "reason": "\ud800 a lone surrogate"}, "reason"),
])
def test_wrong_types_in_ledger_and_key_commands(api, command, params, named):
    assert_invalid(api(command, params), named)


def test_missing_and_unknown_parameters_keep_their_messages(api):
    assert_invalid(api("task_info", {}), "needs task")
    assert_invalid(api("whoami", {"user": "alice"}), "does not take user")
    assert_invalid(api("task_info", [1, 2]), "JSON object")


def test_bad_register_and_login_bodies(api):
    r = requests.post(f"{api.base}/register", json={"user": ["x"], "password": "long-enough-pw", "org": "o"})
    assert_invalid(r, "user")
    r = requests.post(f"{api.base}/login", json={"user": "bob", "password": 12345678})
    assert_invalid(r, "password")
    r = requests.post(f"{api.base}/login", data="[" * 5000, headers={"Content-Type": "application/json"})
    assert_invalid(r)


def test_bad_long_poll_timeouts(api):
    for timeout in ("nan", "-5", "abc", "inf"):
        r = requests.get(f"{api.base}/tasks/run/messages", params={"timeout": timeout},
                         headers={"Authorization": f"Bearer {api.tokens['bob']}"})
        assert_invalid(r, "timeout")


def test_good_requests_still_work(api):
    assert api("list_tasks", {"status": "CREATED", "search": "open"}).json()["data"][0]["name"] == "open"
    entries = api("ledger_entries", {"task": "run", "start": 0, "end": 2}).json()["data"]
    assert [e["entry"]["type"] for e in entries] == ["task_created", "joined"]
    assert api("ledger_checkpoint", {"task": "run", "size": 2}).json()["data"]["checkpoint"]["size"] == 2
    r = api("create_task", {"task": "ok", "definition": {"quorum": 1, "seed": 2**53 - 1, "model": [[[1]]]}}, "alice")
    assert r.status_code == 200 and r.json()["data"]["definition"]["seed"] == 2**53 - 1


def test_the_amqp_front_refuses_the_same_requests(server, api):
    """The cloud front parses and checks with the same code: the same typed errors, no exception.
    (No broker is needed for a refused request: it never reaches the topology or the broker's users.)"""
    from types import SimpleNamespace

    from werkbund.platform.amqp import names
    from werkbund.platform.amqp.front import AmqpFront

    front = AmqpFront(server.service, SimpleNamespace(vhost="werkbund"))
    # bob's broker account for the session he logged in with (a password is never a broker credential)
    account = names.session_account("bob", names.session_id(api.tokens["bob"]), "werkbund")

    def handle(command, body, headers=None):
        reply_headers, reply = front.handle(account, command, body, headers or {}, topology=None)
        assert reply_headers["status"] == "error", reply
        return json.loads(reply)["error"]

    deep = b'{"task": "x", "definition": {"model": ' + b"[" * 1000 + b"]" * 1000 + b"}}"
    for command, body, words in [
        ("create_task", deep, "nested"),
        ("create_task", b'{"task": "x", "definition": {"seed": 1152921504606846976}}', "2**53"),
        ("join_task", b'{"task": "open", "schema": {"n_samples": "abc"}}', "n_samples"),
        ("list_tasks", b'{"search": ["a"]}', "search"),
        ("ledger_cosign", b'{"task": "run", "size": [1], "signature": "AAAA"}', "size"),
    ]:
        error = handle(command, body)
        assert error["code"] == "invalid_input" and all(w in error["message"] for w in words), error
    error = handle("put_model", b"model", {"params": json.dumps({"task": "run", "meta": [1, 2]}).encode()})
    assert error["code"] == "invalid_input" and "metadata" in error["message"]
