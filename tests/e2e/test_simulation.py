"""`werkbund.simulate` and `werkbund simulate`: virtual companies from one data set, through the platform
core, on a bounded pool; the partitioners; the same model as a real task for the same data, partition and seed."""
from __future__ import annotations

import json
import subprocess
import threading
import time

import numpy as np
import pandas as pd
import pytest

import werkbund
from werkbund.platform.errors import AuthenticationFailed, InvalidInput
import werkbund.simulation.partition as P
from werkbund.simulation.runner import participant_names

from conftest import WERKBUND, quiet_env

LOGREG = {"algorithm": "logistic_regression", "rounds": 3, "epochs": 1, "batch_size": 16, "learning_rate": 0.05}


def _digits():
    from werkbund.algorithms.data.loading import load_dataset

    return load_dataset("builtin:digits")


def _covers(parts, n):
    joined = np.concatenate(parts)
    return len(joined) == n and len(np.unique(joined)) == n


# ------------------------------------------------------------------------------------------- partitioners
def test_iid_deals_nearly_equal_disjoint_parts_deterministically():
    parts = P.iid(1797, 10, seed=1)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and _covers(parts, 1797)
    assert all(np.array_equal(a, b) for a, b in zip(parts, P.iid(1797, 10, seed=1)))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, P.iid(1797, 10, seed=2)))


def test_by_column_gives_each_company_one_group_in_proportion_to_the_groups():
    values = np.array(["L"] * 600 + ["M"] * 300 + ["H"] * 100)
    parts = P.by_column(values, 10, seed=0)
    assert _covers(parts, 1000)
    groups = [set(values[p]) for p in parts]
    assert all(len(g) == 1 for g in groups)
    assert sorted(next(iter(g)) for g in groups).count("L") == 6
    assert sorted(next(iter(g)) for g in groups).count("H") == 1
    whole = P.by_column(values, 2, seed=0)  # fewer companies than groups: whole groups dealt out
    assert _covers(whole, 1000) and sorted(len(p) for p in whole) == [400, 600]


def test_dirichlet_skews_the_labels_more_for_a_small_alpha():
    labels = _digits().y
    skewed = P.dirichlet(labels, 20, alpha=0.1, seed=0)
    even = P.dirichlet(labels, 20, alpha=100.0, seed=0)
    assert _covers(skewed, len(labels)) and _covers(even, len(labels))
    assert min(len(p) for p in skewed) >= P.DEFAULT_MIN_ROWS
    top_skewed = P.describe(skewed, labels)["mean_top_class_share"]
    top_even = P.describe(even, labels)["mean_top_class_share"]
    assert top_skewed > 0.5 > 0.2 > top_even  # 10 classes: about 0.1 each when even
    again = P.dirichlet(labels, 20, alpha=0.1, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(skewed, again))


def test_quantity_skew_varies_the_sizes_and_keeps_a_minimum():
    parts = P.quantity(1797, 30, beta=0.5, seed=0, min_rows=5)
    sizes = np.array([len(p) for p in parts])
    assert _covers(parts, 1797) and sizes.min() >= 5
    assert sizes.max() > 4 * np.median(sizes)  # a few large companies, many small ones
    flat = np.array([len(p) for p in P.quantity(1797, 30, beta=1000.0, seed=0)])
    assert flat.max() - flat.min() < sizes.max() - sizes.min()


def test_partition_specs_parse_and_refuse_clearly():
    assert str(P.parse_partition("dirichlet:0.5")) == "dirichlet:0.5"
    assert P.parse_partition("column:Type").column == "Type"
    assert P.parse_partition("quantity:1.5").alpha == 1.5
    for bad in ("", "dirichlet", "dirichlet:-1", "quantity:x", "column:", "random"):
        with pytest.raises(ValueError):
            P.parse_partition(bad)
    with pytest.raises(ValueError, match="cannot give"):
        P.iid(5, 10)


# ------------------------------------------------------------------------------------------ simulations
def test_twenty_virtual_companies_give_a_result_like_a_real_task():
    result = werkbund.simulate(LOGREG, "builtin:digits", partition="dirichlet:0.5", participants=20, seed=0,
                               progress=False)
    assert isinstance(result, werkbund.Result)
    history = result.history
    assert list(history.index) == [1, 2, 3]
    assert history["n_reported"].tolist() == [20, 20, 20]
    assert history["accuracy"].between(0, 1).all()
    assert set(result.participants["participant"]) == set(participant_names(20))
    assert set(result.model) >= {"weights", "bias", "mean", "scale"}
    assert result.model["weights"].shape == (64, 10)
    assert len(result.round_times) == 3 and result.per_round_s > 0 and result.errors == {}
    assert result._task.info()["status"] == "COMPLETE" and result.n_participants == 20
    assert "20 participants (dirichlet:0.5)" in result.summary()


def test_virtual_users_cost_no_argon2_and_cannot_log_in(monkeypatch):
    from werkbund.platform import passwords

    def refuse(*args, **kwargs):
        raise AssertionError("argon2 was used for a virtual participant")

    monkeypatch.setattr(passwords, "hash_password", refuse)
    monkeypatch.setattr(passwords, "check_password", refuse)
    result = werkbund.simulate(dict(LOGREG, rounds=1), "builtin:digits", participants=200, progress=False)
    assert result.history["n_reported"].tolist() == [200]
    monkeypatch.undo()
    service = result.platform.service
    for name in ("coordinator", participant_names(200)[0]):
        with pytest.raises(AuthenticationFailed):
            service.login(name, "")
        with pytest.raises(AuthenticationFailed):
            service.login(name, "!simulated: no password opens this account")


def test_a_bounded_pool_serves_many_participants_without_a_thread_each():
    seen = []

    class Count(werkbund.simulation.runner.RoundClock):
        def round_done(self, number, total, summary):
            seen.append(threading.active_count())
            super().round_done(number, total, summary)

    original = werkbund.simulation.runner.RoundClock
    werkbund.simulation.runner.RoundClock = Count
    try:
        result = werkbund.simulate(dict(LOGREG, rounds=2), "builtin:digits", participants=300, workers=2,
                                   progress=False)
    finally:
        werkbund.simulation.runner.RoundClock = original
    assert result.history["n_reported"].tolist() == [300, 300]
    assert seen and max(seen) <= threading.active_count() + 2  # the caller's threads and 2 workers, not 300


def test_partition_by_a_text_column_of_a_dataframe():
    rng = np.random.default_rng(0)
    n = 600
    frame = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n),
                          "plant": rng.choice(["north", "south", "east"], size=n, p=[0.5, 0.3, 0.2])})
    frame["label"] = (frame["a"] + frame["b"] > 0).astype(int)
    result = werkbund.simulate(dict(LOGREG, rounds=2), frame, target="label", partition="column:plant",
                               participants=6, progress=False)
    assert result.final.meta["features"] == ["a", "b"]  # the partition column is not a feature
    assert sum(result.sizes) == n and result.history["n_reported"].tolist() == [6, 6]
    with pytest.raises(werkbund.DataError, match="no such column"):
        werkbund.simulate(LOGREG, frame, target="label", partition="column:site", participants=3, progress=False)
    with pytest.raises(InvalidInput, match="cannot give"):
        werkbund.simulate(LOGREG, frame, target="label", partition="column:plant", participants=400, progress=False)


def test_identity_keys_bring_the_ledger_and_the_privacy_modes(tmp_path, monkeypatch):
    monkeypatch.setenv("WERKBUND_HOME", str(tmp_path / "home"))
    secure = werkbund.simulate(dict(LOGREG, rounds=2, pom=2), "builtin:digits", participants=6, progress=False)
    assert secure.ledger and secure.history["n_reported"].tolist() == [6, 6] and secure.errors == {}
    assert secure.final.ledger_matches is True  # the model's sha256 is the one on the verified ledger
    bundle = secure.platform.service.ledger.bundle("coordinator", "simulation")
    types = [item["entry"]["type"] for item in bundle["entries"]]
    assert types.count("update_submitted") == 12 and types[-1] == "task_finished"
    assert not (tmp_path / "home").exists()  # nothing kept for a throw-away platform
    plain = werkbund.simulate(dict(LOGREG, rounds=2), "builtin:digits", participants=6, progress=False)
    assert not plain.ledger and plain.final.ledger_matches is None


@pytest.mark.slow
def test_a_simulation_and_a_real_task_give_the_same_model(tmp_path, monkeypatch):
    """Same data, partition and seed: the same final model. Not bit for bit: the aggregator adds the
    updates (and merges the feature moments) in the order they arrive, which differs between runs of
    either, so float64 sums may differ in their last bits (about 1e-16 relative); three rounds of Adam
    keep that far below the tolerance here."""
    monkeypatch.setenv("WERKBUND_HOME", str(tmp_path / "home"))
    for name in ("WERKBUND_URL", "WERKBUND_USER", "WERKBUND_PASSWORD", "WERKBUND_CREDENTIALS", "WERKBUND_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    definition = dict(LOGREG, seed=7)
    n = 4
    simulated = werkbund.simulate(definition, "builtin:digits", partition="dirichlet:0.5", participants=n, seed=7,
                                  progress=False)

    digits = _digits()
    parts = P.partition_rows("dirichlet:0.5", n, seed=7, labels=digits.y)
    platform = werkbund.start_local_platform(tmp_path / "platform")
    try:
        creator = werkbund.register("alice", "alice-secret-1", "acme", url=platform.url)
        task = creator.create_task("same-model", definition, quorum=n, max_participants=n)
        runs = []
        for name, rows in zip(participant_names(n), parts):
            member = werkbund.register(name, f"{name}-secret", name, url=platform.url)
            member.task("same-model").join(digits._take(rows))
            runs.append(member.task("same-model").participate(background=True, progress=False))
        real = task.aggregate(progress=False)
        for run in runs:
            run.wait(timeout=120)
        real_model, real_history = real.model, real.history
    finally:
        platform.stop()
    assert set(real_model) == set(simulated.model)
    for key in real_model:
        assert np.allclose(real_model[key], simulated.model[key], rtol=1e-9, atol=1e-12), key
    assert np.allclose(real_history["accuracy"], simulated.history["accuracy"], rtol=1e-9)
    assert real_history["n_reported"].tolist() == simulated.history["n_reported"].tolist() == [n] * 3


def test_werkbund_simulate_help_tells_every_option_and_default():
    import click
    from click.testing import CliRunner

    from werkbund.client.cli import cli

    command = cli.commands["simulate"]
    for param in command.params:
        if param.name == "help":
            continue
        assert isinstance(param, click.Option) and (param.help or "").strip(), param.name
        assert param.required or param.show_default or "default" in param.help.lower(), param.name
    text = CliRunner().invoke(cli, ["simulate", "--help"], prog_name="werkbund", terminal_width=200).output
    assert "dirichlet:ALPHA" in text and "column:NAME" in text and "--participants" in text


@pytest.mark.slow
def test_werkbund_simulate_from_the_command_line(tmp_path):
    out = tmp_path / "results"
    started = time.monotonic()
    done = subprocess.run([WERKBUND, "simulate", "--algorithm", "logistic_regression", "--data", "builtin:digits",
                           "--participants", "50", "--partition", "dirichlet:0.5", "--rounds", "2", "--seed", "3",
                           "--learning-rate", "0.05", "--out", str(out)],
                          env=quiet_env(WERKBUND_HOME=str(tmp_path / "home")), capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert "simulated simulation: 50 participants (dirichlet:0.5), 2 rounds" in done.stdout
    facts = json.loads((out / "simulation.json").read_text())
    assert facts["n_participants"] == 50 and len(facts["round_times"]) == 2 and facts["errors"] == {}
    assert (out / "history.csv").exists() and (out / "participants.csv").exists()
    assert (out / "model.safetensors").exists() and (out / "accuracy.png").exists()
    assert pd.read_csv(out / "history.csv")["n_reported"].tolist() == [50, 50]
    assert time.monotonic() - started < 120

    bad = subprocess.run([WERKBUND, "simulate", "--data", "builtin:digits", "--partition", "skewed"],
                         env=quiet_env(WERKBUND_HOME=str(tmp_path / "home")), capture_output=True, text=True,
                         timeout=120, stdin=subprocess.DEVNULL)
    assert bad.returncode == 1 and "unknown partition" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_the_ray_backend_gives_the_same_model_on_a_local_ray_instance():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = werkbund.simulate(LOGREG, "builtin:digits", partition="quantity:1.0", participants=40, seed=2,
                                   backend="ray", progress=False)
    finally:
        ray.shutdown()
    here = werkbund.simulate(LOGREG, "builtin:digits", partition="quantity:1.0", participants=40, seed=2,
                             progress=False)
    assert on_ray.backend == "ray" and on_ray.workers == 2 and on_ray.errors == {}
    assert on_ray.history["n_reported"].tolist() == [40, 40, 40]
    for key in here.model:  # the same participants' code and data; only the order of the updates differs
        assert np.allclose(on_ray.model[key], here.model[key], rtol=1e-9, atol=1e-12), key


def test_the_ray_backend_names_its_extra_when_ray_is_missing(monkeypatch):
    import importlib

    from werkbund.simulation import ray_backend

    real = importlib.import_module

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(ray_backend.importlib, "import_module", no_ray)
    with pytest.raises(InvalidInput, match=r"pip install 'werkbund\[ray\]'"):
        werkbund.simulate(LOGREG, "builtin:digits", participants=2, backend="ray", progress=False)
