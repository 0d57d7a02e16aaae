"""The layout rules of docs/architecture.md that keep the package honest."""
import subprocess
import sys

from conftest import ROOT, WERKBUND


def test_platform_from_repository_root_is_the_standard_library():
    assert not (ROOT / "platform" / "__init__.py").exists()
    out = subprocess.run([sys.executable, "-c", "import platform, sys; print(platform.__file__); platform.system()"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "site-packages" not in out and str(ROOT) not in out


def test_werkbund_platform_is_the_core():
    out = subprocess.run([sys.executable, "-c", "import werkbund.platform.service as s; print(s.__file__)"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(ROOT / "platform" / "service.py")


def test_version():
    out = subprocess.run([WERKBUND, "--version"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("werkbund, version ")


def test_algorithm_registry_lists_neural_network():
    out = subprocess.run([WERKBUND, "algorithms"], capture_output=True, text=True, check=True).stdout
    names = [line.split(":")[0] for line in out.splitlines()]
    assert "neural_network" in names and names == sorted(names)


def test_nothing_pickled_in_shipped_code():
    offenders = []
    for folder in ("platform", "local_platform", "client", "algorithms", "usecases", "ledger"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            if "import pickle" in text or "allow_pickle=True" in text:
                offenders.append(str(path))
    assert offenders == []


def test_learning_code_imports_no_fronts():
    offenders = []
    for path in (ROOT / "algorithms").rglob("*.py"):
        text = path.read_text()
        for front in ("werkbund.client", "werkbund.platform", "werkbund.local_platform"):
            if f"from {front}" in text or f"import {front}" in text:
                offenders.append(f"{path.name}: {front}")
    assert offenders == []


def test_demo_refuses_zero_participants_without_a_traceback():
    result = subprocess.run([WERKBUND, "demo", "--participants", "0"], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "--participants" in result.stderr


def test_unwritable_model_path_is_one_line(tmp_path):
    from werkbund.client.cli.common import handle_errors

    @handle_errors
    def write():
        (tmp_path / "missing-dir" / "model.keras").write_bytes(b"x")

    import pytest
    with pytest.raises(SystemExit) as stop:
        write()
    assert stop.value.code == 1
