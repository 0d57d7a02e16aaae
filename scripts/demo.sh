#!/usr/bin/env bash
# Set everything up and run the main job: a federated task end to end on the local platform.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/werkbund demo "$@"
