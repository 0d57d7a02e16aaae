"""`import werkbund` as a data scientist uses it from a notebook: a real local platform over HTTP,
real Keras training, runs in the foreground and in the background, results as DataFrames and figures."""
from __future__ import annotations

import json
import sqlite3
import time

import numpy as np
import pandas as pd
import pytest

import werkbund

PASSWORDS = {"alice": "alice-secret-1", "bob": "bob-secret-22", "carol": "carol-secret-333",
             "mallory": "mallory-secret-4"}


@pytest.fixture
def platform(tmp_path, monkeypatch):
    monkeypatch.setenv("WERKBUND_HOME", str(tmp_path / "home"))
    for name in ("WERKBUND_URL", "WERKBUND_USER", "WERKBUND_PASSWORD", "WERKBUND_CREDENTIALS", "WERKBUND_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    server = werkbund.start_local_platform(tmp_path / "platform")
    yield server
    server.stop()


def _register(platform, name: str) -> werkbund.Session:
    return werkbund.register(name, PASSWORDS[name], f"{name} GmbH", url=platform.url)


def _digits_frame(part: int, parts: int) -> pd.DataFrame:
    from sklearn.datasets import load_digits

    bunch = load_digits(as_frame=True)
    frame = bunch.frame.rename(columns={"target": "digit"})  # the column name of builtin:digits
    return frame.iloc[part::parts].reset_index(drop=True)


def _wait_until(check, what: str, timeout: float = 120.0):
    """Wait for a state (an event we can only observe by asking), with a bound that only fails the test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_a_whole_task_from_python_gives_tables_figures_and_the_model(platform, tmp_path):
    alice = _register(platform, "alice")
    task = alice.create_task("weld-1", {"algorithm": "neural_network", "epochs": 1}, quorum=2, rounds=2,
                             batch_size=32, learning_rate=0.003, description="welding quality")
    assert task.info()["definition"]["rounds"] == 2 and task.status == "CREATED"

    bob, carol = _register(platform, "bob"), _register(platform, "carol")
    listed = bob.list_tasks(search="welding")
    assert isinstance(listed, pd.DataFrame)
    assert listed[["name", "creator", "status", "quorum", "joined"]].values.tolist() == [
        ["weld-1", "alice", "CREATED", 2, 0]]
    # bob joins with a DataFrame from his notebook, carol with a built-in data set
    bob.task("weld-1").join(_digits_frame(0, 2), target="digit")
    carol.task("weld-1").join("builtin:digits", shard="2/2")
    assert alice.list_tasks(mine=True)["joined"].tolist() == [2]
    assert bob.list_tasks(joined=True)["name"].tolist() == ["weld-1"]

    runs = [s.task("weld-1").participate(background=True, progress="lines") for s in (bob, carol)]
    result = task.aggregate(progress=False)

    history = result.history
    assert list(history.index) == [1, 2]
    assert history["n_reported"].tolist() == [2, 2]
    assert all(set(r.split(", ")) == {"bob", "carol"} for r in history["reported"])
    assert history["accuracy"].between(0, 1).all() and history["n_test"].gt(0).all()
    per_site = result.participants
    assert sorted(zip(per_site["round"], per_site["participant"])) == [
        (1, "bob"), (1, "carol"), (2, "bob"), (2, "carol")]
    assert set(per_site["status"]) == {"reported"} and per_site["n_train"].gt(0).all()

    figure = result.plot()
    assert figure.axes[0].get_ylabel() == "test accuracy"
    assert len(figure.axes[0].lines) >= 3  # combined and one per participant
    confusion = result.plot_confusion()
    assert confusion.axes[0].get_xlabel() == "predicted"

    final = result.final
    assert final.ledger_matches is True and final.ledger["model_sha256"] == final.sha256
    predictions = final.model.predict(np.zeros((3, 64), dtype=np.float32), verbose=0)
    assert predictions.shape == (3, 10)
    assert final.classes == list(range(10))
    assert task.verify_ledger().ok

    for run in runs:
        mine = run.wait(timeout=120)
        assert run.status == "done" and run.progress["round"] == 2
        assert 0 <= mine.evaluation["accuracy"] <= 1
        assert mine.history["n_reported"].tolist() == [2, 2]  # the same rounds as the creator's
    assert alice.list_tasks(status="COMPLETE")["name"].tolist() == ["weld-1"]
    # every member that received the final model kept a platform-signed checkpoint that covers the
    # final model's entry: a platform that later drops that entry is caught by any member's verify
    assert bob.task("weld-1").verify_ledger().ok
    with sqlite3.connect(tmp_path / "platform" / "platform.sqlite") as db:
        db.execute("DELETE FROM ledger_entries WHERE task = 'weld-1' AND entry LIKE '%task_finished%'")
        db.execute("DELETE FROM ledger_checkpoints WHERE task = 'weld-1' AND size > "
                   "(SELECT COUNT(*) FROM ledger_entries WHERE task = 'weld-1')")
    for member in (bob, carol):
        report = member.task("weld-1").verify_ledger()
        assert not report.ok, f"{member.name} did not notice the rollback"
    saved = result.save(tmp_path / "results")
    assert (tmp_path / "results" / "history.csv").exists() and any(p.endswith("accuracy.png") for p in saved)


def test_user_mistakes_raise_typed_errors_with_the_cli_messages(platform, tmp_path):
    alice = _register(platform, "alice")
    with pytest.raises(werkbund.AuthenticationFailed):
        werkbund.connect(url=platform.url, user="alice", password="wrong password")
    with pytest.raises(werkbund.TaskNotFound, match="nope"):
        alice.task("nope")
    with pytest.raises(werkbund.UserExists):
        _register(platform, "alice")
    task = alice.create_task("t", algorithm="logistic_regression", quorum=1, rounds=1)
    with pytest.raises(werkbund.TaskExists):
        alice.create_task("t", algorithm="logistic_regression")
    with pytest.raises(werkbund.InvalidInput, match="quorum"):
        alice.create_task("u", algorithm="logistic_regression", quorum="two")

    bob = _register(platform, "bob")
    with pytest.raises(werkbund.InvalidInput, match="only the creator"):
        bob.task("t").aggregate(progress=False)
    with pytest.raises(werkbund.InvalidInput, match="not joined"):
        bob.task("t").participate(data="builtin:digits", progress=False)
    with pytest.raises(werkbund.DataError, match="target"):
        bob.task("t").join(_digits_frame(0, 2))
    with pytest.raises(werkbund.DataError, match="does not exist"):
        bob.task("t").join(tmp_path / "missing.csv", target="y")
    bob.task("t").join((np.random.default_rng(0).normal(size=(40, 4)), np.arange(40) % 2))
    with pytest.raises(werkbund.AlreadyJoined):
        bob.task("t").join("builtin:digits")
    with pytest.raises(werkbund.PermissionDenied):
        bob.task("t").delete()
    assert task.status == "CREATED"  # nothing was lost on the way


def test_connect_reuses_the_cached_session_and_reads_a_credentials_file(platform, tmp_path):
    _register(platform, "alice")
    again = werkbund.connect(url=platform.url, user="alice")  # no password: the token from register
    assert again.whoami()["user"] == "alice"
    creds = tmp_path / "alice.json"
    creds.write_text(json.dumps({"platform": "local", "url": platform.url, "user": "alice",
                                 "password": PASSWORDS["alice"]}))
    assert werkbund.connect(credentials=creds).name == "alice"
    with pytest.raises(werkbund.AuthenticationFailed, match="no password for bob"):
        werkbund.connect(url=platform.url, user="bob")
    with pytest.raises(werkbund.InvalidInput, match="not valid JSON"):
        creds.write_text("{")
        werkbund.connect(credentials=creds)


def test_a_background_aggregator_waiting_for_its_quorum_stops_and_the_task_stays_open(platform):
    alice = _register(platform, "alice")
    task = alice.create_task("t", algorithm="logistic_regression", quorum=2, rounds=1)
    run = task.aggregate(background=True, progress=False)
    _wait_until(lambda: "waiting for the quorum" in run.progress["message"], "the aggregator to wait")
    assert not run.done and run.status == "running"
    progress = run.stop(timeout=30)
    assert progress["status"] == "stopped" and run.done
    with pytest.raises(werkbund.RunStopped):
        run.wait()
    assert task.status == "CREATED"  # nothing started, so a later aggregate() can still run it


@pytest.mark.slow
def test_a_stopped_aggregator_leaves_the_task_started_and_resumes_from_its_checkpoint(platform, tmp_path):
    alice = _register(platform, "alice")
    task = alice.create_task("t", algorithm="logistic_regression", quorum=2, rounds=30, epochs=1,
                             round_timeout=60)
    sites = [_register(platform, n) for n in ("bob", "carol")]
    for i, site in enumerate(sites):
        site.task("t").join("builtin:digits", shard=f"{i + 1}/2")
    runs = [s.task("t").participate(background=True, progress=False) for s in sites]
    checkpoints = tmp_path / "checkpoints"
    first = task.aggregate(background=True, progress=False, checkpoint_dir=checkpoints)
    _wait_until(lambda: first.progress["round"] >= 2, "two rounds")
    assert first.stop(timeout=60)["status"] == "stopped"
    assert task.status == "STARTED"  # resumable; the participants keep waiting
    assert not any(r.done for r in runs)

    result = task.aggregate(resume=True, progress=False, checkpoint_dir=checkpoints)
    assert result.history.index.tolist() == list(range(1, 31))
    assert task.status == "COMPLETE"
    for run in runs:
        assert run.wait(timeout=60).evaluation["accuracy"] > 0.5


@pytest.mark.slow
def test_a_stopped_participant_tells_the_aggregator_which_goes_on_without_it(platform):
    alice = _register(platform, "alice")
    task = alice.create_task("t", algorithm="logistic_regression", quorum=3, min_updates=2, rounds=40,
                             epochs=1, round_timeout=120)
    sites = [_register(platform, n) for n in ("bob", "carol", "mallory")]
    for i, site in enumerate(sites):
        site.task("t").join("builtin:digits", shard=f"{i + 1}/3")
    runs = {s.name: s.task("t").participate(background=True, progress=False) for s in sites}
    aggregator = task.aggregate(background=True, progress=False)
    _wait_until(lambda: runs["mallory"].progress["round"] >= 1 or len(task.rounds()) >= 1, "a first round")
    assert runs["mallory"].stop(timeout=60)["status"] == "stopped"
    result = aggregator.wait(timeout=300)
    mallory = result.participants.query("participant == 'mallory'")
    assert "rejected" in set(mallory["status"])
    assert "participant stopped by its user" in " ".join(mallory["reason"])
    later = result.history.loc[mallory["round"].max() + 1:]
    assert not later.empty and "mallory" not in " ".join(later["reported"] + later["missing"])
    assert task.status == "COMPLETE"
    assert runs["bob"].wait(timeout=60).evaluation["accuracy"] > 0.5


def test_help_on_the_entry_points_says_what_they_take():
    for name in ("connect", "register", "start_local_platform"):
        doc = getattr(werkbund, name).__doc__
        assert doc and len(doc) > 200, name
    assert "password" in werkbund.connect.__doc__ and "credentials" in werkbund.connect.__doc__
    for cls in (werkbund.Session, werkbund.Task, werkbund.Run, werkbund.Result, werkbund.FinalModel):
        public = [n for n in dir(cls) if not n.startswith("_")]
        undocumented = [n for n in public if callable(getattr(cls, n)) and not getattr(cls, n).__doc__]
        assert not undocumented, f"{cls.__name__}: {undocumented}"
    assert set(werkbund.algorithms()["name"]) >= {"neural_network", "kmeans", "logistic_regression"}
