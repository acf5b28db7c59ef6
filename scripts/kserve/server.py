"""A zoo model of approxifer as a KServe custom model server, run with numpy.

    python server.py --model_name lenet5 --weights DIR --http_port P --grpc_port Q

The forward pass is scripts/zoo_numpy.py's, copied beside this file; DIR is the folder of
weights `approxifer export-weights` writes. A request's first input is the batch `[B, ...]`;
the answer is its probabilities `[B, classes]`, named "output". KServe's server takes the
Open Inference Protocol over REST (JSON) and gRPC (typed contents or raw).
"""

import argparse
import sys
import uuid
from pathlib import Path

from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer, model_server

sys.path.insert(0, str(Path(__file__).parent))
from zoo_numpy import ZooModel  # noqa: E402


class Zoo(Model):
    def __init__(self, name, weights):
        super().__init__(name)
        self.model = ZooModel(weights)
        self.ready = True

    def get_input_types(self):
        return [{"name": "input", "datatype": "FP32", "shape": [-1, *self.model.input_shape]}]

    def get_output_types(self):
        return [{"name": "output", "datatype": "FP32", "shape": [-1, -1]}]

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        probabilities = self.model.answer(payload.inputs[0].as_numpy())
        output = InferOutput(name="output", shape=list(probabilities.shape), datatype="FP32")
        output.set_data_from_numpy(probabilities, binary_data=False)
        # KServe's REST front needs an id in every answer; a request may have none.
        response_id = payload.id or str(uuid.uuid4())
        return InferResponse(model_name=self.name, infer_outputs=[output], response_id=response_id)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--weights", required=True)
    args, _ = parser.parse_known_args()
    ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, workers=1).start([Zoo(args.model_name, args.weights)])
