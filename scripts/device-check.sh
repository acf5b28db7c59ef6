#!/usr/bin/env bash
# GPU checks and benchmarks on a lent accelerator machine (see the closing notes of each
# issue). Expects prebuilt binaries in devbin/ (approxifer, gpu-tests) and the Vulkan loader
# packages in .gl/, as the workplace's device tool describes. Writes results under $OUT.
set -uo pipefail
for f in .gl/*.deb; do dpkg -x "$f" /; done
[ -f devbin/bin.tar.gz ] && tar xzf devbin/bin.tar.gz -C devbin
ldconfig
export XDG_RUNTIME_DIR=/tmp/xdg; mkdir -p -m 0700 "$XDG_RUNTIME_DIR"
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES="$icd"
nvidia-smi -L
out="${OUT:-/tmp/out}"; mkdir -p "$out"
APPROXIFER_ADAPTER=discrete ./devbin/gpu-tests --test-threads 1 2>&1 | tail -25 | tee "$out/gpu-tests.txt"
for mib in 1024 64; do
    ./devbin/approxifer bench kernels --adapter discrete --mib "$mib" --repeats 9 --json > "$out/bench-$mib.json" 2> "$out/bench-$mib.err"
    cat "$out/bench-$mib.json" "$out/bench-$mib.err"
done
# The fused pipeline: overhead against LeNet-5's forward pass, and the host round trip.
./devbin/approxifer bench pipeline --adapter discrete --groups 1024 --repeats 9 --json > "$out/pipeline.json" 2> "$out/pipeline.err"
cat "$out/pipeline.json" "$out/pipeline.err"
