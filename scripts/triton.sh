#!/usr/bin/env bash
# Installs NVIDIA Triton Inference Server from PyPI (the `tritonserver` binary and its Python
# backend that the package nvidia-pytriton bundles; no GPU needed) and prints the folder that
# holds `tritonserver`, a launcher with the backend and libraries in place:
#
#   "$(scripts/triton.sh)/tritonserver" --model-repository=REPO --http-port=8100 ...
#
# Idempotent: an installation that runs is kept. Needs the system packages scripts/setup.sh
# installs (python3-venv and the system Python's shared library).
#
#   scripts/triton.sh [DIR]      default: ./target/triton
set -euo pipefail

dir="${1:-$(cd "$(dirname "$0")/.." && pwd)/target/triton}"
launcher="$dir/tritonserver"
# The server prints its usage (and exits 1) on --help: it starts when it can.
runs() { [ -x "$launcher" ] && { "$launcher" --help 2>&1 || true; } | grep -q "Usage: tritonserver"; }
if runs; then
    echo "$dir"
    exit 0
fi

# The backend's stub links against the system interpreter's libpython: the environment must be
# made by that same interpreter (another build of the same version fails when a model loads).
python=/usr/bin/python3
pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
echo "triton: installing nvidia-pytriton (Triton Inference Server) into $dir" >&2
"$python" -m venv "$dir/venv" >&2
# The package's internal layout is used below, so its version is pinned.
# Through the interpreter, not the `pip` script: a venv whose folder moved (a target folder
# copied or renamed) keeps a `pip` whose first line names the old path.
"$dir/venv/bin/python" -m pip install --quiet --disable-pip-version-check "nvidia-pytriton==0.7.0" >&2
site=$("$dir/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
server="$site/pytriton/tritonserver"
stub="$server/python_backend_stubs/$pyver/triton_python_backend_stub"
[ -x "$stub" ] || { echo "triton: no Python backend stub for Python $pyver in nvidia-pytriton" >&2; exit 1; }
mkdir -p "$dir/backends/python"
cp "$server/backends/python/libtriton_python.so" "$server/backends/python/triton_python_backend_utils.py" \
    "$stub" "$dir/backends/python/"

cat > "$launcher" <<LAUNCH
#!/usr/bin/env bash
# Triton Inference Server from nvidia-pytriton, written by scripts/triton.sh.
export PATH="$dir/venv/bin:\$PATH" LD_LIBRARY_PATH="$site/nvidia_pytriton.libs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
# Each model instance keeps its state under HOME: give it a writable one when there is none.
[ -w "\${HOME:-/nonexistent}" ] || export HOME="\${TMPDIR:-/tmp}"
exec "$server/bin/tritonserver" --backend-directory="$dir/backends" "\$@"
LAUNCH
chmod +x "$launcher"
runs || { echo "triton: $launcher does not run" >&2; exit 1; }
echo "$dir"
