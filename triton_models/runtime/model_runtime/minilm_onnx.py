"""all-MiniLM-L6-v2 on ONNX Runtime: the same forward pass as minilm.py, as an ONNX graph built from
the packaged weights, optionally with int8 weights (dynamic quantization).

Why: the NumPy pass costs ~20 ms of CPU per short prompt; ONNX Runtime's fused kernels on one thread cost a
fraction of that (figures in the README's "Measured"). The graph is built from the shipped safetensors when
the model loads (a second or two, deterministic), so no generated artifact can drift from the weights; the
NumPy encoder stays as the reference the tests hold this one to.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, cast

import numpy as np

from model_runtime.minilm import F32, EmbeddingModelError, packaged_model_dir, padded_batch

OPSET = 17


def build_graph(model_dir: Path | None = None) -> Any:
    """The encoder as an onnx.ModelProto: input_ids, attention_mask (B, L) -> unit-length embedding (B, 384)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from safetensors.numpy import load_file

    d = model_dir or packaged_model_dir()
    try:
        cfg = json.loads((d / "config.json").read_text())
        w = load_file(str(d / "model.safetensors"))
    except (OSError, ValueError) as exc:
        raise EmbeddingModelError(f"cannot load MiniLM from {d}: {exc}") from exc
    hidden, heads, eps = int(cfg["hidden_size"]), int(cfg["num_attention_heads"]), float(cfg["layer_norm_eps"])
    head_dim = hidden // heads
    inits: list[Any] = []
    nodes: list[Any] = []

    def const(name: str, value: Any) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, inputs: list[str], out: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def linear(x: str, name: str, out: str) -> str:
        wt = const(f"{name}.wT", np.ascontiguousarray(w[f"{name}.weight"].T, dtype=np.float32))
        b = const(f"{name}.b", w[f"{name}.bias"].astype(np.float32))
        return node("Add", [node("MatMul", [x, wt], f"{out}.mm"), b], out)

    def norm(x: str, name: str, out: str) -> str:
        g = const(f"{name}.g", w[f"{name}.weight"].astype(np.float32))
        b = const(f"{name}.b", w[f"{name}.bias"].astype(np.float32))
        return node("LayerNormalization", [x, g, b], out, axis=-1, epsilon=eps)

    const("split_heads", np.array([0, 0, heads, head_dim], dtype=np.int64))
    const("merge_heads", np.array([0, 0, hidden], dtype=np.int64))
    const("scale", np.array(1.0 / np.sqrt(head_dim), dtype=np.float32))
    const("one", np.array(1.0, dtype=np.float32))
    const("half", np.array(0.5, dtype=np.float32))
    const("inv_sqrt2", np.array(1.0 / np.sqrt(2.0), dtype=np.float32))
    const("neg_big", np.array(-1e9, dtype=np.float32))
    const("tiny", np.array(1e-9, dtype=np.float32))
    const("axes_1", np.array([1], dtype=np.int64))
    const("axes_12", np.array([1, 2], dtype=np.int64))
    const("axes_2", np.array([2], dtype=np.int64))

    word = const("word", w["embeddings.word_embeddings.weight"].astype(np.float32))
    pos = const("pos", w["embeddings.position_embeddings.weight"].astype(np.float32))
    typ = const("type0", w["embeddings.token_type_embeddings.weight"][0].astype(np.float32))
    x = node("Add", [node("Add", [node("Gather", [word, "input_ids"], "e.word"),
                                  node("Gather", [pos, "position_ids"], "e.pos")], "e.sum"), typ], "e.all")
    x = norm(x, "embeddings.LayerNorm", "e.out")
    # Padding is never attended to: -1e9 added to its scores (B, 1, 1, L).
    keep = node("Sub", ["one", "attention_mask"], "mask.inv")
    bias = node("Unsqueeze", [node("Mul", [keep, "neg_big"], "mask.neg"), "axes_12"], "mask.bias")
    for i in range(int(cfg["num_hidden_layers"])):
        p = f"encoder.layer.{i}"

        def split(t: str, perm: list[int], name: str) -> str:
            return node("Transpose", [node("Reshape", [t, "split_heads"], f"{name}.r")], name, perm=perm)

        q = split(linear(x, f"{p}.attention.self.query", f"l{i}.q"), [0, 2, 1, 3], f"l{i}.qh")
        k = split(linear(x, f"{p}.attention.self.key", f"l{i}.k"), [0, 2, 3, 1], f"l{i}.kh")
        v = split(linear(x, f"{p}.attention.self.value", f"l{i}.v"), [0, 2, 1, 3], f"l{i}.vh")
        scores = node("Add", [node("Mul", [node("MatMul", [q, k], f"l{i}.qk"), "scale"], f"l{i}.qks"), bias],
                      f"l{i}.scores")
        probs = node("Softmax", [scores], f"l{i}.probs", axis=-1)
        ctx = node("Reshape", [node("Transpose", [node("MatMul", [probs, v], f"l{i}.pv")], f"l{i}.pvt",
                                    perm=[0, 2, 1, 3]), "merge_heads"], f"l{i}.ctx")
        attn = linear(ctx, f"{p}.attention.output.dense", f"l{i}.attn")
        x1 = norm(node("Add", [x, attn], f"l{i}.res1"), f"{p}.attention.output.LayerNorm", f"l{i}.x1")
        inter = linear(x1, f"{p}.intermediate.dense", f"l{i}.inter")
        erf = node("Erf", [node("Mul", [inter, "inv_sqrt2"], f"l{i}.gs")], f"l{i}.erf")
        gelu = node("Mul", [node("Mul", [inter, "half"], f"l{i}.gh"),
                            node("Add", [erf, "one"], f"l{i}.g1")], f"l{i}.gelu")
        out = linear(gelu, f"{p}.output.dense", f"l{i}.out")
        x = norm(node("Add", [x1, out], f"l{i}.res2"), f"{p}.output.LayerNorm", f"l{i}.x")
    # Mean over real tokens, then unit length (sentence-transformers' pooling + Normalize).
    m3 = node("Unsqueeze", ["attention_mask", "axes_2"], "pool.m3")
    total = node("ReduceSum", [node("Mul", [x, m3], "pool.masked"), "axes_1"], "pool.sum", keepdims=0)
    count = node("Max", [node("ReduceSum", [m3, "axes_1"], "pool.cnt", keepdims=0), "tiny"], "pool.cntc")
    node("LpNormalization", [node("Div", [total, count], "pool.mean")], "embedding", axis=1, p=2)

    graph = helper.make_graph(
        nodes, "minilm_l6_v2",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "length"]),
         helper.make_tensor_value_info("position_ids", TensorProto.INT64, [1, "length"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.FLOAT, ["batch", "length"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


class OnnxMiniLMEncoder:
    """Same contract as MiniLMEncoder.encode, on ONNX Runtime with one thread (two contend on 2 cores)."""

    def __init__(self, model_dir: Path | None = None, quantize: bool = True, max_seq_length: int = 256) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        d = model_dir or packaged_model_dir()
        self._tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        self._tok.enable_truncation(max_seq_length)
        self._tok.no_padding()
        self.dim = 384
        graph = build_graph(d)
        with tempfile.TemporaryDirectory(prefix="conflux-minilm-") as tmp:
            path = Path(tmp) / "minilm.onnx"
            path.write_bytes(graph.SerializeToString())
            if quantize:
                from onnxruntime.quantization import QuantType, quantize_dynamic

                qpath = Path(tmp) / "minilm.int8.onnx"
                quantize_dynamic(str(path), str(qpath), weight_type=QuantType.QInt8, per_channel=True)
                path = qpath
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.inter_op_num_threads = 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def encode(self, sentences: list[str]) -> F32:
        if not sentences:
            return np.zeros((0, self.dim), dtype=np.float32)
        ids, mask = padded_batch(self._tok, sentences)
        positions = np.arange(ids.shape[1], dtype=np.int64)[None]
        out = self._session.run(["embedding"], {"input_ids": ids, "position_ids": positions, "attention_mask": mask})
        return cast(F32, out[0].astype(np.float32))
