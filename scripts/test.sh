#!/usr/bin/env bash
# The whole test suite, set-up included: `scripts/test.sh` from the repository root.
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh -p approxifer-kernels`).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
# The datasets and the pretrained CNN the model tests read (verified; fetched once).
APPROXIFER_DATA="$(scripts/fetch-data.sh)"
export APPROXIFER_DATA
# The official Python clients of the Open Inference Protocol, for the conformance tests.
APPROXIFER_PYTHON="$(scripts/python-clients.sh)"
export APPROXIFER_PYTHON
# NVIDIA Triton Inference Server (from PyPI), the third-party server the worker tests front.
APPROXIFER_TRITON="$(scripts/triton.sh)"
export APPROXIFER_TRITON
# Seldon's MLServer (from PyPI), another: its REST front takes JSON tensors only.
APPROXIFER_MLSERVER="$(scripts/mlserver.sh)"
export APPROXIFER_MLSERVER
# KServe's Python model server (from PyPI), the third: gRPC answers in typed contents.
APPROXIFER_KSERVE="$(scripts/kserve.sh)"
export APPROXIFER_KSERVE

# The Vulkan loader warns on every start when this is unset; give it a private directory.
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
    export XDG_RUNTIME_DIR="${TMPDIR:-/tmp}/approxifer-runtime-$(id -u)"
    mkdir -p -m 0700 "$XDG_RUNTIME_DIR"
fi

# Release mode: the accuracy sweeps and property tests are slow unoptimised, and the README's
# main command builds the same profile, so the two share one target directory.
exec cargo test --release --workspace "$@"
