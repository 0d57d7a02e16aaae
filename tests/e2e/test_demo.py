"""The README's main job: `werkbund demo`, small."""
import subprocess

import pytest

from conftest import WERKBUND, quiet_env

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run([WERKBUND, "demo", "--participants", "2", "--rounds", "2", "--epochs", "2",
                             "--out", str(out)], capture_output=True, text=True, timeout=400, cwd=tmp_path,
                            env=quiet_env(WERKBUND_HOME=str(tmp_path / "home")), stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    final = float(result.stdout.split("final accuracy ")[1].split()[0])
    assert final > 0.6  # two rounds on digits; chance is 0.1
    loss = float(result.stdout.split("(loss ")[1].split(")")[0])
    assert loss < 2.0  # a pixel constant at every site must not blow up the loss on test rows
    assert (out / "final-model.keras").stat().st_size > 10000
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "site1.keras").exists() and (out / "site2.keras").exists()
