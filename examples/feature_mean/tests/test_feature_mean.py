"""The plug-in tested in one process: the real platform core and round engine, no network.

Run it after installing the plug-in (``pip install -e .`` in this folder, so that its entry point
exists): ``pytest tests``. The federation is an ``InProcPlatform``: the creator runs the
aggregator in this thread, each participant runs in a thread of its own.
"""
from __future__ import annotations

import json
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from werkbund.algorithms.data.tables import dataset_from_arrays
from werkbund.client.api import register
from werkbund.client.transports.inproc import InProcPlatform
from werkbund.platform.errors import InvalidInput

from werkbund_feature_mean import ALGORITHM

FEATURES = ["pressure", "temperature", "vibration"]


def site_data(seed: int, rows: int):
    rng = np.random.default_rng(seed)
    x = rng.normal([1.0, -2.0, 0.5], [1.0, 0.5, 2.0], size=(rows, len(FEATURES)))
    return dataset_from_arrays(x, rng.integers(0, 2, rows), features=FEATURES, target="ok")


def run_task(definition: dict, sites: dict) -> tuple[dict, dict]:
    """Create the task, join every site, run the aggregator and the participants to the end.

    Returns (the final model as the aggregator stored it, {site: participant outcome})."""
    folder = Path(tempfile.mkdtemp(prefix="feature-mean-"))
    platform = InProcPlatform(f"sqlite:///{folder / 'platform.db'}")
    # identity keys sign the ledger entries; POM 2 also needs them for its key agreement
    creator = register("alice", "alice-password", "acme", platform="inproc", inproc=platform,
                       identity=Ed25519PrivateKey.generate())
    creator.create_task("t", dict(definition, algorithm="feature_mean", quorum=len(sites)))
    outcomes, threads = {}, []
    for name, data in sites.items():
        user = register(name, f"{name}-password", name, platform="inproc", inproc=platform,
                        identity=Ed25519PrivateKey.generate())
        user.join_task("t", data.schema())
        train, test = data.split(0.2, 0)

        def work(handle=user.participant("t"), train=train, test=test, name=name):
            outcomes[name] = ALGORITHM.participant(handle, train, test).run()

        threads.append(threading.Thread(target=work, daemon=True))
    for thread in threads:
        thread.start()
    ALGORITHM.aggregator(creator.aggregator("t")).run()
    for thread in threads:
        thread.join(timeout=60)
    model, _ = creator.get_model("t")
    return json.loads(model), outcomes


@pytest.mark.parametrize("pom", [1, 2])
def test_the_federated_moments_are_the_pooled_ones(pom):
    sites = {"bob": site_data(1, 120), "carol": site_data(2, 80)}
    model, outcomes = run_task({"pom": pom, "rounds": 1, "shrinkage": 0.25}, sites)
    pooled = np.concatenate([d.x for d in sites.values()]).astype(np.float64)
    variance = pooled.var(axis=0)
    variance = 0.75 * variance + 0.25 * variance.mean()
    assert model["count"] == 200
    np.testing.assert_allclose(model["mean"], pooled.mean(axis=0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(model["variance"], variance, rtol=1e-9, atol=1e-9)
    assert outcomes["bob"]["model"] == model  # every participant keeps the same model


def test_the_declaration_checks_the_definition():
    assert ALGORITHM.validate({"pom": 2})["shrinkage"] == 0.0
    for bad in ({"shrinkage": 1.5}, {"pom": 3}, {"clusters": 3}, {"dp": {"epsilon": 1, "delta": 1e-5}}):
        with pytest.raises(ValueError):
            ALGORITHM.validate(bad)
    with pytest.raises(InvalidInput, match="shrinkage"):  # the creator's client refuses it before sending
        run_task({"shrinkage": -1}, {"bob": site_data(1, 10)})
