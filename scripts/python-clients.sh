#!/usr/bin/env bash
# Installs the official Python clients of the Open Inference Protocol (NVIDIA's tritonclient,
# HTTP and gRPC) from PyPI into a virtual environment, for the conformance tests, and prints
# its interpreter's path. Idempotent: an environment that already imports them is kept.
#
#   scripts/python-clients.sh [DIR]      default: ./target/python-clients
set -euo pipefail

dir="${1:-$(cd "$(dirname "$0")/.." && pwd)/target/python-clients}"
python="$dir/bin/python"
check='import tritonclient.http, tritonclient.grpc, numpy'
if ! { [ -x "$python" ] && "$python" -c "$check" 2>/dev/null; }; then
    echo "python-clients: installing tritonclient into $dir" >&2
    python3 -m venv "$dir" >&2
    "$python" -m pip install --quiet --disable-pip-version-check \
        "tritonclient[http,grpc]==2.73.0" "numpy>=1.26,<3" >&2
    "$python" -c "$check"
fi
echo "$python"
