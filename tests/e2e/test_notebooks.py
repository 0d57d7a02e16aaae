"""The notebooks under notebooks/ run top to bottom without an error, on small data.

Each notebook is executed with nbclient in a fresh kernel of this virtualenv's Python (a
kernelspec written for the test, so that no other ``python3`` kernel on the machine is picked).
The creator and the participant notebooks run at the same time against one local platform, as
three people would: ``task_creator.ipynb`` as alice and two ``task_participant.ipynb`` as bob and
carol (quorum 2). The notebooks in git carry no outputs; a fast test checks that.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebooks extra is not installed: pip install -e '.[notebooks]'")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
ALL = ["task_creator.ipynb", "task_participant.ipynb", "predictive_maintenance.ipynb", "privacy_modes.ipynb"]
CELL_TIMEOUT = 600
PASSWORDS = {"alice": "alice-notebook-pw", "bob": "bob-notebook-pw", "carol": "carol-notebook-pw"}


def test_notebooks_in_git_have_no_outputs():
    """Commit-ready notebooks: valid, no outputs, no execution counts, the python3 kernel."""
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(ALL)
    for name in ALL:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata.kernelspec.name == "python3", name
        for index, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{name}: cell {index} has outputs"
        first_code = next(c for c in nb.cells if c.cell_type == "code")
        assert "%matplotlib inline" in first_code.source, name


# ---------------------------------------------------------------------------------- execution
@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """A ``python3`` kernelspec that starts this interpreter (the virtualenv's), first on JUPYTER_PATH."""
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from jupyter_client.kernelspec import KernelSpecManager

    path = tmp_path_factory.mktemp("jupyter")
    spec = path / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (werkbund tests)", "language": "python"}))
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = str(path) + (os.pathsep + old if old else "")
    try:
        assert KernelSpecManager().get_kernel_spec("python3").argv[0] == sys.executable
        yield "python3"
    finally:
        if old is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = old


def kernel_env(home: Path, **settings) -> dict:
    """The kernel's environment: this one without werkbund settings, plus ``settings``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("WERKBUND_") or k == "WERKBUND_DATA_DIR"}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1", WERKBUND_HOME=str(home),
               WERKBUND_NB_OUT=str(home / "results"))
    env.update({k: str(v) for k, v in settings.items()})
    return env


def execute(kernel_name: str, name: str, workdir: Path, env: dict):
    """Run a notebook top to bottom; raise with the failing cell's source and error if a cell fails."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    workdir.mkdir(parents=True, exist_ok=True)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(nb, kernel_name=kernel_name, timeout=CELL_TIMEOUT, startup_timeout=120,
                            resources={"metadata": {"path": str(workdir)}})
    try:
        client.execute(env=env)
    except CellExecutionError as exc:
        raise AssertionError(f"{name} failed in {workdir}:\n{exc}") from None
    finally:  # the executed notebook, outputs and all, for a look after a failure
        nbformat.write(nb, workdir / f"executed-{name}")
    return nb


def outputs(nb, mime: str) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if mime in o.get("data", {})]


def text_of(nb) -> str:
    parts = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            data = o.get("data", {})
            parts.append(o.get("text", "") if "text" in o else data.get("text/markdown", data.get("text/plain", "")))
    return "\n".join(parts)


@pytest.mark.slow
def test_creator_and_two_participants_at_the_same_time(kernel, tmp_path, monkeypatch):
    import werkbund

    monkeypatch.setenv("WERKBUND_HOME", str(tmp_path / "test-home"))
    platform = werkbund.start_local_platform(tmp_path / "platform")
    common = {"WERKBUND_URL": platform.url, "WERKBUND_NB_TASK": "nb-ci", "WERKBUND_NB_WAIT": 300}
    runs = {
        "alice": ("task_creator.ipynb", dict(common, WERKBUND_NB_QUORUM=2, WERKBUND_NB_ROUNDS=2,
                                             WERKBUND_NB_EPOCHS=1, WERKBUND_NB_QUORUM_TIMEOUT=300)),
        "bob": ("task_participant.ipynb", dict(common, WERKBUND_NB_SHARD="1/2")),
        "carol": ("task_participant.ipynb", dict(common, WERKBUND_NB_SHARD="2/2")),
    }
    done, errors = {}, {}

    def work(user, name, settings):
        try:
            env = kernel_env(tmp_path / user, WERKBUND_USER=user, WERKBUND_PASSWORD=PASSWORDS[user], **settings)
            done[user] = execute(kernel, name, tmp_path / user, env)
        except BaseException as exc:  # reported below, with the others'
            errors[user] = exc

    started = time.monotonic()
    threads = [threading.Thread(target=work, args=(user, *spec), name=f"notebook-{user}") for user, spec in runs.items()]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=3 * CELL_TIMEOUT)
        assert not any(t.is_alive() for t in threads), "a notebook is still running"
        assert not errors, "\n\n".join(f"--- {user}: {exc}" for user, exc in errors.items())
        print(f"creator and participants: {time.monotonic() - started:.0f} s")

        alice = werkbund.connect(url=platform.url, user="alice", password=PASSWORDS["alice"])
        task = alice.task("nb-ci")
        assert task.status == "COMPLETE"
        history = task.history
        assert list(history.index) == [1, 2] and list(history["n_reported"]) == [2, 2]
        assert set(history["reported"].iloc[-1].split(", ")) == {"bob", "carol"}
    finally:
        platform.stop()
    for user in runs:  # every notebook showed its plots and its tables
        assert len(outputs(done[user], "image/png")) >= 2, user
        assert len(outputs(done[user], "text/html")) >= 3, user
    assert "matches the ledger: True" in text_of(done["alice"])
    assert "matches the ledger: True" in text_of(done["bob"])
    assert (tmp_path / "alice" / "results" / "nb-ci" / "history.csv").exists()


@pytest.mark.slow
def test_predictive_maintenance(kernel, tmp_path):
    """AI4I and C-MAPSS, local vs central vs federated, on few rows; SYNTHETIC without WERKBUND_DATA_DIR."""
    env = kernel_env(tmp_path / "home", WERKBUND_NB_ROWS=1500, WERKBUND_NB_ROUNDS=2, WERKBUND_NB_EPOCHS=1)
    nb = execute(kernel, "predictive_maintenance.ipynb", tmp_path / "run", env)
    text = text_of(nb)
    assert "failure F1" in text and "cycles of RMSE" in text
    assert len(outputs(nb, "image/png")) >= 5
    if not os.environ.get("WERKBUND_DATA_DIR"):  # the generated data says so in every title
        assert "SYNTHETIC AI4I 2020" in text and "SYNTHETIC NASA C-MAPSS" in text


@pytest.mark.slow
def test_privacy_modes(kernel, tmp_path):
    """The same task under POM 1, 2, 3 and with DP, in one kernel; the table has the epsilon spent."""
    env = kernel_env(tmp_path / "home", WERKBUND_NB_PARTICIPANTS=2, WERKBUND_NB_ROUNDS=2, WERKBUND_NB_EPOCHS=1)
    nb = execute(kernel, "privacy_modes.ipynb", tmp_path / "run", env)
    text = text_of(nb)
    for label in ("POM 1", "POM 2", "POM 3", "POM 1 + DP"):
        assert f"{label}: task " in text and "COMPLETE" in text
    assert "one masked sum of 2 updates" in text and "ciphertexts from" in text
    assert "epsilon spent" in text and len(outputs(nb, "image/png")) >= 1
