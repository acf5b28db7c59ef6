"""NVIDIA's tritonclient (HTTP and gRPC) against `approxifer serve`: health, metadata, infer
(binary and JSON tensors over HTTP, raw over gRPC), the request id, the approximate-rows
parameter, the classification extension (class_count), the model configuration, the
statistics, the repository index, streaming inference over gRPC, and a bad request of each
kind. Run by tests/cli.rs with the server's addresses;
exits non-zero, saying why, on the first mismatch.

    python tritonclient_conformance.py REST_ADDR GRPC_ADDR MODEL
"""

import queue
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import model_config_pb2 as model_config
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
    check("model_configuration" in extensions, f"{name}: server metadata lists model_configuration: {extensions}")
    # Triton's model configuration, as its example clients read it to form their requests.
    config = client.get_model_config(model)
    if name == "http":
        batch, dims, out_dims, data_type = config["max_batch_size"], config["input"][0]["dims"], config["output"][0]["dims"], config["input"][0]["data_type"]
    else:
        config = config.config
        batch, dims, out_dims = config.max_batch_size, list(config.input[0].dims), list(config.output[0].dims)
        data_type = model_config.DataType.Name(config.input[0].data_type)
    check(batch >= 6 and dims == [1, 28, 28] and out_dims == [10] and data_type == "TYPE_FP32",
          f"{name}: model config {batch} {dims} {out_dims} {data_type}")
    refused(lambda: client.get_model_config("no-such-model"), f"{name}: another model's config", "404" if name == "http" else "NOT_FOUND")
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
    # first, the largest near the row's largest probability.
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
        # Both answers are decoded approximations, and which class tops a flat row can differ
        # between two of them: the top value, continuous, is compared.
        agree = sum(abs(row[0][0] - float(np.max(p))) < 0.3 for row, p in zip(parsed, exact))
        check(agree >= 5, f"{name}: top values agree with the largest probabilities in {agree} of 6 rows")
    if name == "grpc":
        # Triton's streaming inference: every request answered on the stream, in any order, a
        # failure as an error in line.
        answers = queue.Queue()
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        for i in range(4):
            client.async_stream_infer(model, [ok], request_id=f"stream-{i}")
        client.async_stream_infer("no-such-model", [ok], request_id="stream-bad")
        got = [answers.get(timeout=30) for _ in range(5)]
        client.stop_stream()
        results = [result for result, error in got if error is None]
        errors = [error for result, error in got if error is not None]
        ids = sorted(result.get_response().id for result in results)
        check(ids == [f"stream-{i}" for i in range(4)], f"grpc: streamed answers' ids {ids}")
        check(all(np.allclose(r.as_numpy("output").sum(axis=1), 1.0, atol=1e-3) for r in results), "grpc: streamed rows are probabilities")
        check(len(errors) == 1 and "no-such-model" in errors[0].message(), f"grpc: the stream's failure {[e.message() for e in errors]}")
    # Triton's repository index: the one model served, ready.
    index = client.get_model_repository_index()
    if name == "http":
        listed = [(m["name"], m["state"]) for m in index]
    else:
        listed = [(m.name, m.state) for m in index.models]
    check(listed == [(model, "READY")], f"{name}: repository index {listed}")
    # Triton's statistics: the inferences above counted (JSON over HTTP, a message over gRPC).
    check("statistics" in extensions, f"{name}: server metadata lists statistics: {extensions}")
    statistics = client.get_inference_statistics(model)
    if name == "http":
        stats = statistics["model_stats"][0]
        count, success, queued = stats["inference_count"], stats["inference_stats"]["success"]["count"], stats["inference_stats"]["queue"]["count"]
    else:
        stats = statistics.model_stats[0]
        count, success, queued = stats.inference_count, stats.inference_stats.success.count, stats.inference_stats.queue.count
    check(count >= 6 and success >= 2 and queued >= count, f"{name}: statistics {count} {success} {queued}")
    refused(lambda: client.get_inference_statistics("no-such-model"), f"{name}: another model's statistics", "404" if name == "http" else "NOT_FOUND")
    client.close()

print("tritonclient conformance: ok")
