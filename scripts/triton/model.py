"""A zoo model of approxifer in Triton Inference Server's Python backend, run with numpy.

The forward pass is scripts/zoo_numpy.py's, copied beside this file; the weights are the
arrays `approxifer export-weights` writes, in the folder `weights` beside it. Triton gathers
requests into one execution (dynamic batching); the model answers them with one forward pass.
"""

import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, str(Path(__file__).parent))
from zoo_numpy import ZooModel  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        self.model = ZooModel(Path(args["model_repository"]) / args["model_version"] / "weights")
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]

    def execute(self, requests):
        inputs = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        rows = [len(x) for x in inputs]
        probabilities = self.model.answer(np.concatenate(inputs))
        answers = np.split(probabilities, np.cumsum(rows)[:-1])
        return [pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, y)]) for y in answers]
