"""A zoo model of approxifer as an MLServer custom runtime, run with numpy.

The forward pass is scripts/zoo_numpy.py's, copied beside this file; the model settings'
`parameters.uri` names the folder of weights `approxifer export-weights` writes. A request's
first input is the batch `[B, ...]`; the answer is its probabilities `[B, classes]`.
"""

import sys
from pathlib import Path

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri

sys.path.insert(0, str(Path(__file__).parent))
from zoo_numpy import ZooModel  # noqa: E402


class Zoo(MLModel):
    async def load(self) -> bool:
        # A relative URI is the model settings' folder's.
        self.model = ZooModel(await get_model_uri(self.settings))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        probabilities = self.model.answer(NumpyCodec.decode_input(payload.inputs[0]))
        name = self.settings.outputs[0].name if self.settings.outputs else "output"
        output = NumpyCodec.encode_output(name=name, payload=probabilities)
        return InferenceResponse(model_name=self.name, id=payload.id, outputs=[output])
