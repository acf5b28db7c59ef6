"""KServe's Python client (`kserve.InferenceRESTClient` and `InferenceGRPCClient`) against
`approxifer serve`: health (whose JSON bodies it parses), readiness, inference over REST (JSON
and binary tensors) and gRPC with the request id echoed, and a bad request refused. Run by
tests/cli.rs with the server's addresses; exits non-zero, saying why, on the first mismatch.

    python kserve_client_conformance.py REST_ADDR GRPC_ADDR MODEL
"""

import asyncio
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

rest, grpc, model = sys.argv[1:4]
base = f"http://{rest}"


def check(condition, what):
    if not condition:
        sys.exit(f"{what}: failed")


def request(queries, request_id, binary=False, name="input"):
    tensor = InferInput(name, list(queries.shape), "FP32")
    tensor.set_data_from_numpy(queries, binary_data=binary)
    return InferRequest(model_name=model, infer_inputs=[tensor], request_id=request_id)


def check_answer(result, request_id, rows, what):
    check(result.id == request_id, f"{what}: id echoed ({result.id})")
    probabilities = result.outputs[0].as_numpy()
    check(probabilities.shape == (rows, 10), f"{what}: output shape {probabilities.shape}")
    check(np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-3), f"{what}: rows are probabilities")


async def main():
    queries = np.random.default_rng(7).standard_normal((3, 1, 28, 28)).astype(np.float32)
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    check(await client.is_server_live(base) is True, "rest: live")
    check(await client.is_server_ready(base) is True, "rest: ready")
    check(await client.is_model_ready(base, model) is True, "rest: model ready")
    for binary in (False, True):
        what = f"rest (binary {binary})"
        result = await client.infer(base, request(queries, f"rest-{binary}", binary), model_name=model)
        check_answer(result, f"rest-{binary}", 3, what)
    try:
        await client.infer(base, request(queries, "bad", name="not-the-input"), model_name=model)
        sys.exit("rest: a wrong input name: accepted")
    except Exception as e:
        check("400" in str(e) or "Bad Request" in str(e), f"rest: a wrong input name ({e})")
    await client.close()

    client = InferenceGRPCClient(grpc)
    check(await client.is_server_ready() is True, "grpc: ready")
    result = await client.infer(request(queries, "grpc-1"))
    check_answer(result, "grpc-1", 3, "grpc")
    await client.close()


asyncio.run(main())
print("kserve client conformance: ok")
