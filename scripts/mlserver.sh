#!/usr/bin/env bash
# Installs Seldon's MLServer from PyPI into a virtual environment, for the tests that run it as
# the coordinator's workers, and prints its interpreter's path. Start a server with
#
#   "$(scripts/mlserver.sh)" -c 'import sys; from mlserver.cli import main; sys.exit(main())' start REPO
#
# (through the interpreter, not the `mlserver` script: a venv whose folder moved keeps a script
# whose first line names the old path). Idempotent: an environment that imports it is kept.
#
#   scripts/mlserver.sh [DIR]      default: ./target/mlserver
set -euo pipefail

dir="${1:-$(cd "$(dirname "$0")/.." && pwd)/target/mlserver}"
python="$dir/bin/python"
check='import mlserver.cli, numpy'
if ! { [ -x "$python" ] && "$python" -c "$check" 2>/dev/null; }; then
    echo "mlserver: installing MLServer into $dir" >&2
    python3 -m venv "$dir" >&2
    # Pinned: the tests read its model settings and its errors as this version writes them.
    "$python" -m pip install --quiet --disable-pip-version-check "mlserver==1.7.1" >&2
    "$python" -c "$check"
fi
echo "$python"
