#!/usr/bin/env bash
# GPU checks and benchmarks on a lent accelerator machine (see the closing notes of each
# issue). Expects prebuilt binaries in devbin/ (approxifer, gpu-tests) and the Vulkan loader
# packages in .gl/, as the workplace's device tool describes. Writes results under $OUT.
# `device-check.sh kernels|pipeline|serve|serve-bench` runs one part alone.
set -uo pipefail
what="${1:-all}"
for f in .gl/*.deb; do dpkg -x "$f" /; done
[ -f devbin/bin.tar.gz ] && tar xzf devbin/bin.tar.gz -C devbin
ldconfig
export XDG_RUNTIME_DIR=/tmp/xdg; mkdir -p -m 0700 "$XDG_RUNTIME_DIR"
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES="$icd"
nvidia-smi -L
out="${OUT:-/tmp/out}"; mkdir -p "$out"
if [ "$what" = all ] || [ "$what" = kernels ]; then
APPROXIFER_ADAPTER=discrete ./devbin/gpu-tests --test-threads 1 2>&1 | tail -25 | tee "$out/gpu-tests.txt"
for mib in 1024 64; do
    ./devbin/approxifer bench kernels --adapter discrete --mib "$mib" --repeats 9 --json > "$out/bench-$mib.json" 2> "$out/bench-$mib.err"
    cat "$out/bench-$mib.json" "$out/bench-$mib.err"
done
fi
if [ "$what" = all ] || [ "$what" = pipeline ]; then
# The fused pipeline: overhead against LeNet-5's forward pass, and the host round trip.
for groups in 256 1024 4096; do
    ./devbin/approxifer bench pipeline --adapter discrete --groups "$groups" --repeats 25 --json > "$out/pipeline-$groups.json" 2> "$out/pipeline-$groups.err"
    cat "$out/pipeline-$groups.json" "$out/pipeline-$groups.err"
done
fi
if [ "$what" = all ] || [ "$what" = serve ]; then
# The HTTP server with its workers' replicas on the GPU(s): a prediction, health, metrics, drain.
./devbin/approxifer serve --device gpu --listen 127.0.0.1:8089 > "$out/serve.log" 2>&1 &
server=$!
python3 - <<'PY' 2>&1 | tee "$out/serve-client.txt"
import json, time, urllib.request
base = "http://127.0.0.1:8089"
for _ in range(120):
    try:
        print(urllib.request.urlopen(base + "/health").read().decode()); break
    except Exception:
        time.sleep(0.5)
body = json.dumps({"inputs": {"shape": [8, 1, 28, 28], "data": [0.0] * 8 * 784}}).encode()
request = urllib.request.Request(base + "/v1/predict", body, {"content-type": "application/json"})
latencies = []
for _ in range(200):
    start = time.time()
    try:
        answer = json.loads(urllib.request.urlopen(request).read())
    except urllib.error.HTTPError as e:
        answer = {"predictions": [e.read().decode()]}
    latencies.append(1e3 * (time.time() - start))
latencies.sort()
print(f"200 requests of 8 queries, one at a time: p50 {latencies[100]:.2f} ms, p99 {latencies[198]:.2f} ms, "
      f"first {answer['predictions'][0]}")
print("\n".join(l for l in urllib.request.urlopen(base + "/metrics").read().decode().splitlines() if "queries_total" in l))
PY
kill -INT "$server"; wait "$server"; cat "$out/serve.log"
fi
if [ "$what" = all ] || [ "$what" = serve-bench ]; then
# Batched serving on the GPU: the model alone (closed loop at saturation), batched against
# per-query, then issue 5's fault workload; workers spread over the GPUs, then five on one.
for path in batched per-query; do
    ./devbin/approxifer serve-bench --device gpu --adapter discrete --latency-ms 0 --queries 20000 \
        --max-batch 64 --path "$path" --json > "$out/serve-bench-$path.json" 2> "$out/serve-bench-$path.err"
    cat "$out/serve-bench-$path.json" "$out/serve-bench-$path.err"
done
./devbin/approxifer serve-bench --device gpu --adapter discrete --workers-per-device 8 --queries 20000 \
    --closed 1024 --json > "$out/serve-bench-faults.json" 2> "$out/serve-bench-faults.err"
cat "$out/serve-bench-faults.json" "$out/serve-bench-faults.err"
fi
