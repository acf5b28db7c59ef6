"""approxifer's zoo models with numpy, for third-party inference servers (Triton's Python
backend: scripts/triton/model.py; MLServer: scripts/mlserver/runtime.py; KServe:
scripts/kserve/server.py).

The weights are the arrays `approxifer export-weights` writes (Burn's layouts, named as in its
`manifest.json`). A model answers the softmax of its logits, as `approxifer worker` does, so
that any of these servers can be a coordinator's worker.

Two environment variables of the server process inject the slowness of a straggler:
APPROXIFER_SLOW_FRACTION (the share of batches slowed, default 0) and APPROXIFER_SLOW_FACTOR
(how many times the batch's own time it then takes, default 10).
"""

import json
import os
import random
import time
from pathlib import Path

import numpy as np


def conv2d(x, weight, bias, padding):
    """`x` [B, C, H, W] with `weight` [O, C, kh, kw] (cross-correlation, stride 1)."""
    if padding:
        x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    kh, kw = weight.shape[2:]
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))  # B C H' W' kh kw
    out = np.tensordot(windows, weight, axes=([1, 4, 5], [1, 2, 3]))  # B H' W' O
    return out.transpose(0, 3, 1, 2) + bias[None, :, None, None]


def max_pool_2x2(x):
    b, c, h, w = x.shape
    return x[:, :, : h // 2 * 2, : w // 2 * 2].reshape(b, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def relu(x):
    return np.maximum(x, 0)


def lenet5(p, x):
    x = max_pool_2x2(relu(conv2d(x, p["conv1.weight"], p["conv1.bias"], padding=2)))
    x = max_pool_2x2(relu(conv2d(x, p["conv2.weight"], p["conv2.bias"], padding=0)))
    x = x.reshape(x.shape[0], -1)
    x = relu(x @ p["fc1.weight"] + p["fc1.bias"])
    x = relu(x @ p["fc2.weight"] + p["fc2.bias"])
    return x @ p["fc3.weight"] + p["fc3.bias"]


def mlp(p, x):
    x = x.reshape(x.shape[0], -1)
    layers = sum(1 for name in p if name.endswith(".weight"))
    for i in range(layers):
        x = x @ p[f"layers.{i}.weight"] + p[f"layers.{i}.bias"]
        if i + 1 < layers:
            x = relu(x)
    return x


ARCHITECTURES = {"lenet5": lenet5, "mlp": mlp}


def softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class ZooModel:
    """The model whose weights are in `folder`: `answer(batch)` gives its probabilities."""

    def __init__(self, folder):
        folder = Path(folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        self.forward = ARCHITECTURES[manifest["architecture"]]
        self.params = {t["name"]: np.load(folder / f"{t['name']}.npy") for t in manifest["tensors"]}
        self.input_shape = tuple(manifest["input_shape"])
        self.slow_fraction = float(os.environ.get("APPROXIFER_SLOW_FRACTION", "0"))
        self.slow_factor = float(os.environ.get("APPROXIFER_SLOW_FACTOR", "10"))

    def answer(self, batch):
        """Probabilities `[B, classes]` (float32) of the queries `batch` (any shape `[B, ...]`)."""
        start = time.perf_counter()
        x = np.asarray(batch, dtype=np.float32).reshape((-1,) + self.input_shape)
        probabilities = softmax(self.forward(self.params, x)).astype(np.float32)
        if self.slow_fraction > 0 and random.random() < self.slow_fraction:
            time.sleep((self.slow_factor - 1) * (time.perf_counter() - start))
        return probabilities
