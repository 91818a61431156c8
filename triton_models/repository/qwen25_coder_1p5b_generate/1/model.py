"""Triton Python backend, non-streaming: the whole answer in one response (model_runtime.llama_triton)."""

from model_runtime.llama_triton import GenerateModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
