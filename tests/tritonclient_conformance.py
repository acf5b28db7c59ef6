"""NVIDIA's tritonclient (HTTP and gRPC) against `approxifer serve`: health, metadata, infer
(binary and JSON tensors over HTTP, raw over gRPC), the request id, the approximate-rows
parameter, the classification extension (class_count), and a bad request of each kind. Run by tests/cli.rs with the server's addresses;
exits non-zero, saying why, on the first mismatch.

    python tritonclient_conformance.py REST_ADDR GRPC_ADDR MODEL
"""

import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

rest, grpc, model = sys.argv[1:4]


def check(condition, what):
    if not condition:
        sys.exit(f"{what}: failed")


def refused(call, what, expected_status):
    try:
        call()
    except InferenceServerException as e:
        check(expected_status in str(e.status()), f"{what}: status {e.status()} ({e.message()})")
        return
    sys.exit(f"{what}: accepted")


rng = np.random.default_rng(7)
queries = rng.standard_normal((6, 1, 28, 28)).astype(np.float32)
for name, client_module, url in (("http", httpclient, rest), ("grpc", grpcclient, grpc)):
    client = client_module.InferenceServerClient(url)
    check(client.is_server_live(), f"{name}: live")
    check(client.is_server_ready(), f"{name}: ready")
    check(client.is_model_ready(model), f"{name}: model ready")
    check(not client.is_model_ready("no-such-model"), f"{name}: another model is not ready")
    server = client.get_server_metadata()
    extensions = server["extensions"] if name == "http" else list(server.extensions)
    check("classification" in extensions, f"{name}: server metadata lists the classification extension: {extensions}")
    metadata = client.get_model_metadata(model)
    if name == "http":
        inputs, outputs = metadata["inputs"], metadata["outputs"]
        shape, out_shape, input_name = inputs[0]["shape"], outputs[0]["shape"], inputs[0]["name"]
    else:
        shape, out_shape, input_name = list(metadata.inputs[0].shape), list(metadata.outputs[0].shape), metadata.inputs[0].name
    check(shape == [-1, 1, 28, 28] and out_shape == [-1, 10], f"{name}: metadata shapes {shape} {out_shape}")

    for binary in (True, False) if name == "http" else (True,):
        tensor = client_module.InferInput(input_name, list(queries.shape), "FP32")
        if name == "http":
            tensor.set_data_from_numpy(queries, binary_data=binary)
            requested = client_module.InferRequestedOutput("output", binary_data=binary)
        else:
            tensor.set_data_from_numpy(queries)
            requested = client_module.InferRequestedOutput("output")
        result = client.infer(model, [tensor], outputs=[requested], request_id=f"{name}-{binary}")
        probabilities = result.as_numpy("output")
        check(probabilities is not None and probabilities.shape == (6, 10), f"{name}: output shape")
        check(np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-3), f"{name}: rows are probabilities")
        response = result.get_response()
        if name == "http":
            check(response["id"] == f"{name}-{binary}", f"{name}: id echoed")
            parameters = response["outputs"][0]["parameters"]
            check("approximate" in parameters, f"{name}: approximate parameter")
        else:
            check(response.id == f"{name}-{binary}", f"{name}: id echoed")
            check("approximate" in response.outputs[0].parameters, f"{name}: approximate parameter")

    bad_name = client_module.InferInput("not-the-input", list(queries.shape), "FP32")
    bad_name.set_data_from_numpy(queries)
    refused(lambda: client.infer(model, [bad_name]), f"{name}: a wrong input name", "400" if name == "http" else "INVALID_ARGUMENT")
    bad_shape = client_module.InferInput(input_name, [6, 1, 28, 27], "FP32")
    bad_shape.set_data_from_numpy(queries[:, :, :, :27].copy())
    refused(lambda: client.infer(model, [bad_shape]), f"{name}: a wrong shape", "400" if name == "http" else "INVALID_ARGUMENT")
    refused(lambda: client.get_model_metadata("no-such-model"), f"{name}: another model's metadata", "404" if name == "http" else "NOT_FOUND")
    ok = client_module.InferInput(input_name, list(queries.shape), "FP32")
    ok.set_data_from_numpy(queries)
    refused(lambda: client.infer("no-such-model", [ok]), f"{name}: another model's inference", "404" if name == "http" else "NOT_FOUND")
    # The classification extension: each row's top classes as "value:index" strings, largest
    # first, agreeing with the probabilities' order for the rows decoded exactly.
    exact = client.infer(model, [ok]).as_numpy("output")
    for binary in (True, False) if name == "http" else (True,):
        if name == "http":
            top = client_module.InferRequestedOutput("output", binary_data=binary, class_count=3)
        else:
            top = client_module.InferRequestedOutput("output", class_count=3)
        classes = client.infer(model, [ok], outputs=[top]).as_numpy("output")
        check(classes is not None and classes.shape == (6, 3), f"{name}: class_count shape {None if classes is None else classes.shape}")
        # Binary BYTES come back as bytes, JSON ones as str.
        text = [[c.decode() if isinstance(c, bytes) else c for c in row] for row in classes]
        parsed = [[(float(c.split(":")[0]), int(c.split(":")[1])) for c in row] for row in text]
        for row in parsed:
            check(all(a[0] >= b[0] for a, b in zip(row, row[1:])), f"{name}: classes in decreasing order {row}")
            check(all(0 <= index < 10 for _, index in row), f"{name}: class indices {row}")
        agree = sum(row[0][1] == int(np.argmax(p)) for row, p in zip(parsed, exact))
        check(agree >= 4, f"{name}: top classes agree with the probabilities' in {agree} of 6 rows")
    client.close()

print("tritonclient conformance: ok")
