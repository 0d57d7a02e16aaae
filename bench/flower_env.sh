#!/usr/bin/env bash
# Make .venv-flower: Flower's simulation engine (flwr[simulation], which brings Ray) in a venv of its
# own, because its pins (protobuf, grpcio, numpy, ...) fight werkbund's. bench/simulation.py runs
# Flower's side of the comparison with this venv's python, as a subprocess.
#
#   bash bench/flower_env.sh            # makes or updates .venv-flower in the repository root
#   FLOWER_VENV=/tmp/fl bash bench/flower_env.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FLOWER_VENV:-$ROOT/.venv-flower}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
echo '*' > "$VENV/.gitignore"   # git ignores the venv without a change to the repository's .gitignore
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "flwr[simulation]>=1.13,<2" "numpy>=1.26"
"$VENV/bin/python" -c "import flwr, ray, numpy; print('flwr', flwr.__version__, 'ray', ray.__version__, 'numpy', numpy.__version__)"
echo "Flower venv ready: $VENV"
