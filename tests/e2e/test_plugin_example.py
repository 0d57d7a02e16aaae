"""The example plug-in (examples/feature_mean), installed with pip as a user would, is a first-class algorithm.

It is installed into a folder of its own; the processes that "have" it get that folder on
PYTHONPATH. Shown here: `werkbund algorithms` and `werkbund create --help` list it with its
field; the creator creates a task with it; a platform process without it hosts the task; a
participant without it is refused at join, naming the distribution to install; two participants
with it run it end to end under POM 1 and POM 2, and the final model is the pooled computation.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, WERKBUND, Cli, quiet_env, start_local_platform

EXAMPLE = ROOT / "examples" / "feature_mean"
DISTRIBUTION = "werkbund-feature-mean"
FEATURES = ["pressure", "temperature", "vibration"]
WITH_PLUGIN = ("alice", "bob", "carol")  # mallory has not installed it


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    """`pip install --no-deps --target DIR examples/feature_mean` (from a copy: no build files in the tree)."""
    tmp = tmp_path_factory.mktemp("plugin")
    source, target = tmp / "source", tmp / "site"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                           "--no-build-isolation", "--target", str(target), str(source)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (target / "werkbund_feature_mean" / "__init__.py").exists()
    return target


class PluginCli(Cli):
    """The `werkbund` CLI as run by users who have installed the plug-in (on PYTHONPATH) and one who has not."""

    def __init__(self, url: str, home: Path, plugin: Path):
        super().__init__(url, home)
        self.plugin = plugin

    def env(self, user, password=None):
        env = super().env(user, password)
        env.pop("PYTHONPATH", None)
        if user in WITH_PLUGIN:
            env["PYTHONPATH"] = str(self.plugin)
        return env


def _werkbund(*args: str, plugin: Path | None = None) -> subprocess.CompletedProcess:
    env = quiet_env()
    env.pop("PYTHONPATH", None)
    if plugin is not None:
        env["PYTHONPATH"] = str(plugin)
    return subprocess.run([WERKBUND, *args], env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def test_the_installed_plugin_is_listed_with_its_declaration(plugin):
    listed = _werkbund("algorithms", plugin=plugin)
    assert listed.returncode == 0, listed.stderr
    assert "feature_mean: federated per-feature mean and variance" in listed.stdout
    assert "feature_mean" not in _werkbund("algorithms").stdout  # not installed: not there

    details = _werkbund("algorithms", "--algorithm", "feature_mean", plugin=plugin).stdout
    assert f"provided by   {DISTRIBUTION} 0.1.0" in details
    assert "POM 1 (plain), POM 2 (secure aggregation); differential privacy (dp): no" in details
    assert "shrinkage     a number in [0, 1]; default 0.0" in details and "model file    .json" in details
    facts = json.loads(_werkbund("algorithms", "--algorithm", "feature_mean", "--json", plugin=plugin).stdout)
    assert facts["distribution"] == DISTRIBUTION and facts["privacy_modes"] == [1, 2]

    create_help = _werkbund("create", "--help", plugin=plugin).stdout
    assert "feature_mean" in create_help and "shrinkage=0.0; POM 1, 2" in create_help


def test_the_plugins_own_in_process_tests_pass(plugin, tmp_path):
    """What docs/writing-an-algorithm.md shows a plug-in author: the whole task in one process."""
    env = quiet_env(PYTHONPATH=str(plugin), PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                           str(EXAMPLE / "tests")], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "3 passed" in done.stdout


# ------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def federation(plugin, tmp_path_factory):
    """A local platform process WITHOUT the plug-in, four registered users, two sites' CSV files."""
    tmp = tmp_path_factory.mktemp("federation")
    assert "PYTHONPATH" not in os.environ or str(plugin) not in os.environ["PYTHONPATH"]
    proc, url = start_local_platform(tmp)  # its environment has no trace of the plug-in
    cli = PluginCli(url, tmp, plugin)
    for user, org in (("alice", "acme"), ("bob", "beta"), ("carol", "gamma"), ("mallory", "mu")):
        registered = cli.run(user, "register", "--org", org)
        assert registered.returncode == 0, registered.stderr
    rng = np.random.default_rng(7)
    sites = {}
    for user, rows, shift in (("bob", 70, 0.0), ("carol", 45, 0.8)):
        x = rng.normal([1.0 + shift, -2.0, 0.5], [1.0, 0.5, 2.0], size=(rows, len(FEATURES)))
        y = rng.integers(0, 2, rows)
        with open(tmp / f"{user}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow([*FEATURES, "ok"])
            writer.writerows([*(repr(float(v)) for v in row), int(label)] for row, label in zip(x, y))
        sites[user] = x.astype(np.float32).astype(np.float64)  # as werkbund reads a CSV: float32 features
    yield cli, tmp, sites, proc
    proc.terminate()
    proc.wait(timeout=20)


@pytest.mark.slow
@pytest.mark.parametrize("pom", [1, 2])
def test_the_plugin_runs_end_to_end_through_a_platform_without_it(federation, pom):
    cli, tmp, sites, platform_process = federation
    task = f"means-pom{pom}"
    created = cli.run("alice", "create", "--task", task, "--algorithm", "feature_mean", "--quorum", "2",
                      "--rounds", "2", "--set", "shrinkage=0.25", "--set", f"pom={pom}", "--set", "round_timeout=60")
    assert created.returncode == 0, created.stderr
    info = json.loads(cli.run("mallory", "info", "--task", task, "--json").stdout)  # the platform hosts it
    assert info["definition"]["shrinkage"] == 0.25 and info["pom"] == pom
    assert info["definition"]["algorithm_package"] == {"distribution": DISTRIBUTION, "version": "0.1.0"}
    assert platform_process.poll() is None

    refused = cli.run("mallory", "join", "--task", task, "--data", str(tmp / "bob.csv"), "--target", "ok")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"algorithm 'feature_mean' is not installed here; install the distribution '{DISTRIBUTION}'" \
        in refused.stderr and f"pip install {DISTRIBUTION}" in refused.stderr

    aggregator = cli.start("alice", "aggregate", "--task", task, log=tmp / f"{task}-aggregate.log")
    participants = []
    for user in sites:
        joined = cli.run(user, "join", "--task", task, "--data", str(tmp / f"{user}.csv"), "--target", "ok")
        assert joined.returncode == 0, joined.stderr
        participants.append(cli.start(user, "participate", "--task", task, log=tmp / f"{task}-{user}.log"))
    for proc in (aggregator, *participants):
        proc.wait(timeout=240)
    logs = {p: (tmp / f"{task}-{p}.log").read_text() for p in ("aggregate", *sites)}
    assert [p.returncode for p in (aggregator, *participants)] == [0, 0, 0], logs

    out = tmp / f"{task}.json"
    downloaded = cli.run("alice", "model", "--task", task, "--out", str(out))
    assert downloaded.returncode == 0, downloaded.stderr
    model = json.loads(out.read_text())
    pooled = np.concatenate(list(sites.values()))
    variance = pooled.var(axis=0)
    variance = 0.75 * variance + 0.25 * variance.mean()
    assert model["features"] == FEATURES and model["count"] == len(pooled)
    np.testing.assert_allclose(model["mean"], pooled.mean(axis=0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(model["variance"], variance, rtol=1e-9, atol=1e-9)
    rounds = json.loads(cli.run("alice", "info", "--task", task, "--json").stdout)["rounds"]
    assert [r["metrics"].get("pom", {}).get("mode", 1) for r in rounds] == [pom, pom]
    participant_copy = json.loads((tmp / "bob" / "models" / "bob" / f"{task}.json").read_text())
    assert participant_copy == model  # the declaration's model suffix names the participant's file


@pytest.mark.slow
def test_the_creator_needs_the_plugin_and_its_check_refuses_a_bad_field(federation):
    cli, _, _, _ = federation
    without = cli.run("mallory", "create", "--task", "nope", "--algorithm", "feature_mean")
    assert without.returncode == 1 and "algorithm 'feature_mean' is not installed here" in without.stderr
    bad = cli.run("alice", "create", "--task", "nope", "--algorithm", "feature_mean", "--set", "shrinkage=1.5")
    assert bad.returncode == 1 and "'shrinkage' must be a number in [0, 1], not 1.5" in bad.stderr
    unknown = cli.run("alice", "create", "--task", "nope", "--algorithm", "feature_mean", "--set", "clusters=3")
    assert unknown.returncode == 1 and "has no field 'clusters'; its fields: shrinkage" in unknown.stderr
    plain_only = cli.run("alice", "create", "--task", "nope", "--algorithm", "feature_mean", "--set", "pom=3")
    assert plain_only.returncode == 1 and "runs in POM 1 and 2 only, not POM 3" in plain_only.stderr
    assert "nope" not in cli.run("alice", "list").stdout  # nothing reached the platform
