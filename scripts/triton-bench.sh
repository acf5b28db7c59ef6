#!/usr/bin/env bash
# Tail latency with Triton Inference Server workers (issue 12's target): K + 1 Tritons serve the
# embedded LeNet-5 (scripts/triton/); server 1 takes 10x its time on 5 % of its executions.
# `serve-bench` measures uncoded on the first K, then ApproxIFER (S = 1) on all K + 1 while
# server K is killed (SIGKILL) a third of the way through. Prints both reports (JSON) and the
# ratio of their p99.9 - p50.
#
#   scripts/triton-bench.sh [K] [serve-bench options...]     e.g. scripts/triton-bench.sh 4 --rate 300
set -euo pipefail
cd "$(dirname "$0")/.."
k="${1:-4}"
shift || true
triton="$(scripts/triton.sh)"
cargo build --release --quiet
bin=target/release/approxifer
work="$(mktemp -d)"
pids=()
cleanup() { kill -9 "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

mkdir -p "$work/repository/lenet5/1"
cp scripts/triton/config.pbtxt "$work/repository/lenet5/"
cp scripts/triton/model.py scripts/zoo_numpy.py "$work/repository/lenet5/1/"
"$bin" export-weights --output "$work/repository/lenet5/1/weights" >/dev/null
urls=()
for i in $(seq 0 "$k"); do
    http=$((18100 + 2 * i)) grpc=$((18101 + 2 * i))
    slow=0; [ "$i" -eq 1 ] && slow=0.05
    APPROXIFER_SLOW_FRACTION=$slow APPROXIFER_SLOW_FACTOR=10 "$triton/tritonserver" \
        --model-repository="$work/repository" --http-address=127.0.0.1 --grpc-address=127.0.0.1 \
        --http-port=$http --grpc-port=$grpc --allow-metrics=false >"$work/triton-$i.log" 2>&1 &
    pids+=($!)
    disown
    urls+=(--worker "grpc://127.0.0.1:$grpc/v2/models/lenet5")
done
for i in $(seq 0 "$k"); do
    for _ in $(seq 300); do
        curl -sf "http://127.0.0.1:$((18100 + 2 * i))/v2/models/lenet5/ready" && break
        sleep 0.2
    done
done
echo "triton-bench: $((k + 1)) Tritons ready; server 1 slowed 10x on 5 % of executions" >&2

"$bin" serve-bench --k "$k" --schemes uncoded --json "${urls[@]:0:$((2 * k))}" "$@" >"$work/uncoded.json"
start=$(date +%s.%N)
"$bin" serve-bench --k "$k" --schemes approxifer --json "${urls[@]}" "$@" >"$work/approxifer.json" &
bench=$!
# A third of the uncoded run's duration in, server K dies.
third=$(python3 -c "import json; r=json.load(open('$work/uncoded.json')); print(r['queries']/r['throughput_qps']/3)")
sleep "$third"
kill -9 "${pids[$k]}"
echo "triton-bench: killed server $k after $(python3 -c "import time; print(round(time.time()-$start, 2))") s" >&2
wait "$bench"
cat "$work/uncoded.json" "$work/approxifer.json"
python3 - "$work/uncoded.json" "$work/approxifer.json" <<'PY'
import json, sys
u, a = (json.load(open(p)) for p in sys.argv[1:])
tail = lambda r: r["p999_ms"] - r["p50_ms"]
print(f"uncoded on {u['workers']}: p99.9 - p50 = {tail(u):.2f} ms, {u['errors']} errors; "
      f"approxifer on {a['workers']}: {tail(a):.2f} ms, {a['errors']} errors; ratio {tail(u) / tail(a):.2f}x")
PY
