#!/usr/bin/env bash
# Installs KServe's Python model server from PyPI into a virtual environment, for the tests
# that run it as the coordinator's workers (scripts/kserve/server.py), and prints its
# interpreter's path. Idempotent: an environment that imports it is kept.
#
#   scripts/kserve.sh [DIR]      default: ./target/kserve
set -euo pipefail

dir="${1:-$(cd "$(dirname "$0")/.." && pwd)/target/kserve}"
python="$dir/bin/python"
check='import kserve, numpy'
if ! { [ -x "$python" ] && "$python" -c "$check" 2>/dev/null; }; then
    echo "kserve: installing KServe into $dir" >&2
    python3 -m venv "$dir" >&2
    # Pinned: the tests start its server as this version takes its arguments.
    "$python" -m pip install --quiet --disable-pip-version-check "kserve==0.21.0" >&2
    "$python" -c "$check"
fi
echo "$python"
