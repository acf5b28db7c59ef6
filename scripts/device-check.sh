#!/usr/bin/env bash
# GPU checks and benchmarks on a lent accelerator machine (see the closing notes of each
# issue). Expects prebuilt binaries in devbin/ (approxifer, gpu-tests; or devbin/bin.tar.gz
# holding them) and the Vulkan loader packages in .gl/, as the workplace's device tool
# describes. Everything goes to $OUT/log.txt; serve-bench and bench JSON lines, each tagged
# with its run, to $OUT/results.jsonl.
# `device-check.sh tests|pipeline|serving|serve` runs one part alone.
set -uo pipefail
what="${1:-all}"
for f in .gl/*.deb; do dpkg -x "$f" /; done
[ -f devbin/bin.tar.gz ] && tar xzf devbin/bin.tar.gz -C devbin
ldconfig
export XDG_RUNTIME_DIR=/tmp/xdg; mkdir -p -m 0700 "$XDG_RUNTIME_DIR"
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES="$icd"
out="${OUT:-/tmp/out}"; mkdir -p "$out"
log="$out/log.txt"; results="$out/results.jsonl"
exec > >(tee -a "$log") 2>&1
nvidia-smi -L
bin=./devbin/approxifer

# Runs `approxifer ARGS` under a time limit, its JSON lines tagged {"run": TAG, ...}.
tagged() {
    local tag="$1" limit="$2"; shift 2
    echo "== $tag: approxifer $*"
    timeout "$limit" "$bin" "$@" --json 2> >(grep -v '^\s*$' >&2) |
        sed "s/^{/{\"run\":\"$tag\",/" | tee -a "$results"
}

# The uncoded scheme's throughput_qps in the last line tagged TAG.
uncoded_qps() {
    grep "\"run\":\"$1\"" "$results" | grep '"scheme":"uncoded"' | tail -1 |
        sed 's/.*"throughput_qps":\([0-9.e+-]*\).*/\1/'
}

if [ "$what" = all ] || [ "$what" = tests ]; then
# Every kernel test on the discrete GPU (GPU against CPU, masked encoding included).
APPROXIFER_ADAPTER=discrete timeout 120 ./devbin/gpu-tests --test-threads 1 2>&1 | tail -30
fi

if [ "$what" = all ] || [ "$what" = pipeline ]; then
# Device coding cost: fused encode + decode against LeNet-5's forward pass, >= 64 groups.
for groups in 64 256 4096; do
    tagged "pipeline-$groups" 60 bench pipeline --adapter discrete --groups "$groups" --repeats 25
done
fi

if [ "$what" = all ] || [ "$what" = serving ]; then
common=(serve-bench --device gpu --adapter discrete --schemes uncoded,approxifer)
# Efficiency and "batching pays": the model alone, closed loop at saturation, batched (64)
# against one query (group) per forward pass.
for path in batched per-query; do
    tagged "alone-$path" 90 "${common[@]}" --latency-ms 0 --queries 20000 --max-batch 64 --path "$path"
done
# Issue 5's workload (5 ms per batch, one worker 10x slower on 5 % of dispatches): saturation,
# then 50 % and 80 % of the uncoded saturation, then 100 q/s.
tagged faults-saturation 60 "${common[@]}" --queries 20000 --closed 1024
sat=$(uncoded_qps faults-saturation)
echo "uncoded saturation under faults: ${sat:-?} q/s"
if [ -n "$sat" ]; then
    for share in 50 80; do
        rate=$(awk -v s="$sat" -v p="$share" 'BEGIN { printf "%.0f", s * p / 100 }')
        queries=$(awk -v r="$rate" 'BEGIN { q = int(r * 4); if (q < 2000) q = 2000; if (q > 40000) q = 40000; print q }')
        tagged "faults-$share" 60 "${common[@]}" --queries "$queries" --rate "$rate"
    done
fi
tagged faults-100qps 40 "${common[@]}" --queries 1500 --rate 100
# Eight workers per GPU (here one GPU holds every worker) under the same faults.
tagged faults-8-per-gpu 60 "${common[@]}" --workers-per-device 8 --queries 20000 --closed 1024
fi

if [ "$what" = all ] || [ "$what" = serve ]; then
# The HTTP server with its workers on the GPU: a prediction, health, metrics, drain.
timeout 60 "$bin" serve --device gpu --listen 127.0.0.1:8089 > "$out/serve.log" 2>&1 &
server=$!
timeout 40 python3 - <<'PY'
import json, time, urllib.request
base = "http://127.0.0.1:8089"
for _ in range(60):
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
    except Exception as e:
        answer = {"error": str(e)}
    latencies.append(1e3 * (time.time() - start))
latencies.sort()
print(f"200 requests of 8 queries, one at a time: p50 {latencies[100]:.2f} ms, p99 {latencies[198]:.2f} ms; last: {str(answer)[:200]}")
PY
kill -INT "$server"; wait "$server"; tail -5 "$out/serve.log"
fi
