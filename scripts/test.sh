#!/usr/bin/env bash
# Set everything up and run the test suite, in parallel: most tests wait on processes, brokers and
# browsers, so several run at once on two cores. WERKBUND_TEST_WORKERS=0 runs them one after another.
# Each test file stays on one worker (its module fixtures, e.g. a platform, are started once); the
# longest files go first (tests/conftest.py, HEAVIEST_FILES).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest -n "${WERKBUND_TEST_WORKERS:-4}" --dist loadfile --no-loadscope-reorder "$@"
