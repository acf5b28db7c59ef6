"""A zoo model of approxifer in Triton Inference Server's Python backend, run with numpy.

The weights are the arrays `approxifer export-weights` writes (Burn's layouts, named as in
its `manifest.json`), in the folder `weights` beside this file. Answers the softmax of the
logits, as `approxifer worker` does, so that either can be a coordinator's worker.

Two environment variables of the server process inject the slowness of a straggler:
APPROXIFER_SLOW_FRACTION (the share of executions slowed, default 0) and
APPROXIFER_SLOW_FACTOR (how many times the execution's own time it then takes, default 10).
"""

import json
import os
import random
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


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


class TritonPythonModel:
    def initialize(self, args):
        folder = Path(args["model_repository"]) / args["model_version"] / "weights"
        manifest = json.loads((folder / "manifest.json").read_text())
        self.forward = ARCHITECTURES[manifest["architecture"]]
        self.params = {t["name"]: np.load(folder / f"{t['name']}.npy") for t in manifest["tensors"]}
        self.input_shape = tuple(manifest["input_shape"])
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.slow_fraction = float(os.environ.get("APPROXIFER_SLOW_FRACTION", "0"))
        self.slow_factor = float(os.environ.get("APPROXIFER_SLOW_FACTOR", "10"))

    def execute(self, requests):
        start = time.perf_counter()
        inputs = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        rows = [len(x) for x in inputs]
        batch = np.concatenate(inputs).astype(np.float32).reshape((-1,) + self.input_shape)
        probabilities = softmax(self.forward(self.params, batch)).astype(np.float32)
        if self.slow_fraction > 0 and random.random() < self.slow_fraction:
            time.sleep((self.slow_factor - 1) * (time.perf_counter() - start))
        answers = np.split(probabilities, np.cumsum(rows)[:-1])
        return [pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, y)]) for y in answers]
