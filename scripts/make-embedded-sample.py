#!/usr/bin/env python3
"""Writes the embedded test sample: the first COUNT images and labels of the Fashion-MNIST
test set (MIT licence), as gzipped IDX files in src/embedded/. Run once after
scripts/fetch-data.sh; the outputs are committed.

    scripts/make-embedded-sample.py [DATA_DIR] [COUNT]
"""
import gzip
import os
import struct
import sys

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
data = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("APPROXIFER_DATA", os.path.join(root, "data"))
count = int(sys.argv[2]) if len(sys.argv) > 2 else 1000

for kind, item in (("images", 28 * 28), ("labels", 1)):
    src = os.path.join(data, "fashion-mnist", f"t10k-{kind}-idx{3 if kind == 'images' else 1}-ubyte.gz")
    raw = gzip.open(src).read()
    ndims = raw[3]
    header = 4 + 4 * ndims
    dims = list(struct.unpack(f">{ndims}I", raw[4:header]))
    dims[0] = count
    out = raw[:4] + struct.pack(f">{ndims}I", *dims) + raw[header : header + count * item]
    dst = os.path.join(root, "src", "embedded", f"fashion-mnist-test-{kind}.idx.gz")
    with open(dst, "wb") as f:
        # mtime=0: the same bytes on every run.
        f.write(gzip.compress(out, compresslevel=9, mtime=0))
    print(dst, os.path.getsize(dst))
