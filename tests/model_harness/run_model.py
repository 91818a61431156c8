"""Runs one Triton model's model.py outside Triton, as its Python backend would: the model's version folder and
model folder on sys.path, initialize(args) with the model config as JSON, one execute() over the requests,
finalize() if defined. Reads a JSON job on stdin, writes the responses as JSON on stdout.

Job: {"model_dir", "config" (the model config as Triton's JSON), "requests": [{"inputs": {name: {"dtype",
"shape", "values"}}, "cancelled"?}]}. Output: {"responses": [[{"outputs": {name: [...]}, "error", "final"}]],
"modules": the top-level modules loaded}. Bytes values travel as UTF-8 text."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

DTYPES = {"bytes": np.object_, "int32": np.int32, "uint64": np.uint64, "float32": np.float32, "bool": np.bool_}
TIMEOUT_S = 120


def _tensor(name, spec):
    values = [v.encode() for v in spec["values"]] if spec["dtype"] == "bytes" else spec["values"]
    return pb_utils.Tensor(name, np.array(values, dtype=DTYPES[spec["dtype"]]).reshape(spec["shape"]))


def _plain(response, flags):
    outputs = {}
    for t in response.output_tensors if response else []:
        arr = t.as_numpy()
        outputs[t.name()] = [v.decode() if isinstance(v, bytes) else v for v in arr.reshape(-1).tolist()]
        outputs[t.name() + ".shape"] = list(arr.shape)
    error = response.error.message() if response is not None and response.error is not None else None
    return {"outputs": outputs, "error": error, "final": bool(flags & pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)}


def main():
    job = json.load(sys.stdin)
    model_dir = Path(job["model_dir"]).resolve()
    version = model_dir / "1"
    sys.path[:0] = [str(version), str(model_dir)]  # what Triton's stub adds
    spec = importlib.util.spec_from_file_location("model", version / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    args = {"model_config": json.dumps(job["config"]), "model_instance_kind": "CPU",
            "model_instance_name": f"{model_dir.name}_0", "model_instance_device_id": "0",
            "model_repository": str(model_dir), "model_version": "1", "model_name": model_dir.name}
    if hasattr(model, "initialize"):  # optional, as in Triton
        model.initialize(args)
    requests = [pb_utils.InferenceRequest({n: _tensor(n, s) for n, s in r["inputs"].items()}, r.get("cancelled", False))
                for r in job["requests"]]
    returned = model.execute(requests)
    if returned is None:  # decoupled: responses went through each request's sender, maybe from threads
        for r in requests:
            if not r.get_response_sender().done.wait(TIMEOUT_S):
                raise SystemExit(f"{model_dir.name}: no final flag within {TIMEOUT_S} s")
        responses = [[_plain(resp, flags) for resp, flags in r.get_response_sender().sent] for r in requests]
    else:
        responses = [[_plain(resp, pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)] for resp in returned]
    if hasattr(model, "finalize"):
        model.finalize()
    modules = sorted({name.split(".")[0] for name in sys.modules})
    json.dump({"responses": responses, "modules": modules}, sys.stdout)


if __name__ == "__main__":
    main()
