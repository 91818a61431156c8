"""Triton Python backend, decoupled: one response per token, then a final flag (model_runtime.llama_triton)."""

from model_runtime.llama_triton import StreamingModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
