"""Every Triton model is self-contained: its model.py runs in a venv that holds only triton_models/requirements*.txt
(`make models-env`), with model_runtime on PYTHONPATH and a stand-in for triton_python_backend_utils
(tests/model_harness), and answers a real request. A model that imports the platform's package, or needs a
package its requirements file does not list, fails here, not in the NVIDIA image."""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from conflux.config import REPO_ROOT
from conflux.llm import Message, render_chatml

MODELS = REPO_ROOT / "triton_models" / "repository"
RUNTIME = REPO_ROOT / "triton_models" / "runtime"
HARNESS = REPO_ROOT / "tests" / "model_harness"
PYTHON = REPO_ROOT / ".conflux" / "models-venv" / "bin" / "python"
PROMPT = render_chatml([Message("user", "What is the capital of France?")])
ANSWER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                 "required": ["city"], "additionalProperties": False}


def _config(model: str) -> dict[str, Any]:
    parsed = text_format.Parse((MODELS / model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    config: dict[str, Any] = json_format.MessageToDict(parsed, preserving_proto_field_name=True)
    return config


def _text(*values: str) -> dict[str, Any]:
    return {"dtype": "bytes", "shape": [len(values), 1], "values": list(values)}


def _scalar(dtype: str, value: Any) -> dict[str, Any]:
    return {"dtype": dtype, "shape": [1, 1], "values": [value]}


def run_model(model: str, requests: list[dict[str, Any]], tmp_path: Path) -> list[list[dict[str, Any]]]:
    """The responses of each request, run in the models' own venv; checks the output names against the config."""
    if not PYTHON.exists():
        pytest.fail("the models' venv is missing: `make models-env` (make test and CI run it)")
    config = _config(model)
    declared_in = {i["name"] for i in config["input"]}
    for r in requests:
        assert set(r["inputs"]) <= declared_in, f"{model}: the test sends inputs its config does not declare"
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), "OPENBLAS_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{HARNESS}:{RUNTIME}"}
    job = {"model_dir": str(MODELS / model), "config": config, "requests": requests}
    run = subprocess.run([str(PYTHON), str(HARNESS / "run_model.py")], input=json.dumps(job), env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    assert "conflux" not in result["modules"]
    declared_out = {o["name"] for o in config["output"]}
    per_request: list[list[dict[str, Any]]] = result["responses"]
    for responses in per_request:
        assert responses and responses[-1]["final"], f"{model}: a request ended without the final flag"
        for resp in responses:
            assert {n for n in resp["outputs"] if not n.endswith(".shape")} <= declared_out
    return per_request


def _pieces(responses: list[dict[str, Any]]) -> list[str]:
    return [p for r in responses for p in r["outputs"].get("text_output", [])]


def test_every_model_is_exercised_here() -> None:
    models = {p.parent.name for p in MODELS.glob("*/config.pbtxt")}
    assert models == {"echo", "echo_paced", "minilm_embed", "smollm2", "smollm2_generate", "qwen25_coder",
                      "qwen25_coder_generate", "qwen25_coder_1p5b", "qwen25_coder_1p5b_generate"}, \
        "a new model needs a request in this file"


def test_the_models_venv_has_nothing_of_the_platform() -> None:
    if not PYTHON.exists():
        pytest.fail("the models' venv is missing: `make models-env`")
    for module in ("conflux", "edge", "streams", "fastapi", "aiokafka"):
        probe = subprocess.run([str(PYTHON), "-c", f"import {module}"], capture_output=True, text=True, cwd="/")
        assert probe.returncode != 0, f"{module} is importable in the models' venv"


def test_model_requirements_are_the_platforms() -> None:
    """The local stack serves the same models from the platform's venv: it must hold every model requirement."""
    deps = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(";")[0].split("[")[0].split("=")[0].split("<")[0].split(">")[0].strip().lower() for d in deps}
    for line in (REPO_ROOT / "triton_models" / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name = line.split("=")[0].split("<")[0].split(">")[0].strip().lower()
            assert name in names, f"{name} is a model requirement missing from pyproject.toml"


def test_echo_models(tmp_path: Path) -> None:
    [echo] = run_model("echo", [{"inputs": {"text_input": _text("a b c"), "max_tokens": _scalar("int32", 3)}}],
                       tmp_path)
    assert _pieces(echo) == ["a", " b", " c"]
    paced = run_model("echo_paced", [{"inputs": {"text_input": _text("x y"), "max_tokens": _scalar("int32", 3)}},
                                     {"inputs": {"text_input": _text("x y")}, "cancelled": True}], tmp_path)
    assert _pieces(paced[0]) == ["x", " y", " x"]
    assert _pieces(paced[1]) == []  # a cancelled request stops at once, with only the final flag


def test_minilm_embed_batches_and_matches_the_platforms_encoder(tmp_path: Path) -> None:
    from model_runtime.minilm_onnx import OnnxMiniLMEncoder

    texts = [["How do I reset my password?", "Resetting a forgotten password"], ["The weather in Paris"]]
    responses = run_model("minilm_embed", [{"inputs": {"TEXT": _text(*t)}} for t in texts], tmp_path)
    got = [np.array(r[0]["outputs"]["EMBEDDING"], dtype=np.float32).reshape(r[0]["outputs"]["EMBEDDING.shape"])
           for r in responses]
    assert [g.shape for g in got] == [(2, 384), (1, 384)]  # one response per request, split back from one batch
    want = OnnxMiniLMEncoder(quantize=False).encode([s for t in texts for s in t])
    assert np.allclose(np.vstack(got), want, atol=1e-5)
    assert float(got[0][0] @ got[0][1]) > float(got[0][0] @ got[1][0])  # paraphrases closer than unrelated text


def test_smollm2_streams_and_the_generate_model_agrees(tmp_path: Path) -> None:
    greedy = {"text_input": _text(PROMPT), "max_tokens": _scalar("int32", 12), "temperature": _scalar("float32", 0.0)}
    streamed, guided, logprobs, unsupported, gone = run_model("smollm2", [
        {"inputs": greedy},
        {"inputs": {**greedy, "max_tokens": _scalar("int32", 24),
                    "guided_decoding_guide_type": _text("json_schema"),
                    "guided_decoding_guide": _text(json.dumps(ANSWER_SCHEMA))}},
        {"inputs": {**greedy, "max_tokens": _scalar("int32", 4), "return_log_probs": _scalar("bool", True),
                    "top_logprobs": _scalar("int32", 2)}},
        {"inputs": {**greedy, "guided_decoding_guide_type": _text("regex"), "guided_decoding_guide": _text("a+")}},
        {"inputs": greedy, "cancelled": True},  # cancelled while it waited: not started
    ], tmp_path)
    assert len(gone) == 1 and gone[0]["final"] and "cancelled before it started" in (gone[0]["error"] or "")
    text = "".join(_pieces(streamed))
    assert len(streamed) > 2 and text.strip()  # one response per token, then the final flag
    assert json.loads("".join(_pieces(guided))).keys() == {"city"}
    entries = [e for r in logprobs if "logprobs" in r["outputs"] for e in json.loads(r["outputs"]["logprobs"][0])]
    assert entries and all(len(e["top_logprobs"]) == 2 and e["logprob"] <= 0 for e in entries)
    assert "not supported" in (unsupported[0]["error"] or "") and unsupported[0]["final"]
    [[whole]] = run_model("smollm2_generate", [{"inputs": greedy}], tmp_path)
    assert whole["outputs"]["text_output"] == [text]  # greedy: the same answer in one response


@pytest.mark.parametrize("stream", ["qwen25_coder", "qwen25_coder_1p5b"])
def test_qwen_streams_a_grounded_answer_and_the_generate_model_agrees(stream: str, tmp_path: Path) -> None:
    """The same serving code over the GGUFs joined from six and from 22 packages (model_runtime.gguf_files)."""
    prompt = render_chatml([Message("system", "Answer from the source only.\n[1] Returns are accepted within 45 "
                                              "days of delivery."),
                            Message("user", "Within how many days can an item be returned?")], template="chatml-qwen")
    greedy = {"text_input": _text(prompt), "max_tokens": _scalar("int32", 16), "temperature": _scalar("float32", 0.0)}
    streamed, guided = run_model(stream, [
        {"inputs": greedy},
        {"inputs": {**greedy, "max_tokens": _scalar("int32", 24), "guided_decoding_guide_type": _text("json_schema"),
                    "guided_decoding_guide": _text(json.dumps(ANSWER_SCHEMA))}},
    ], tmp_path)
    text = "".join(_pieces(streamed))
    assert len(streamed) > 2 and "45" in text, text
    assert json.loads("".join(_pieces(guided))).keys() == {"city"}
    [[whole]] = run_model(f"{stream}_generate", [{"inputs": greedy}], tmp_path)
    assert whole["outputs"]["text_output"] == [text]
