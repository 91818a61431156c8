# Image for the Conflux services (edge, workers, sinks, topic init). Engines run in their own images.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY conflux ./conflux
COPY schemas ./schemas
COPY infra ./infra
COPY triton_models ./triton_models
RUN pip install --no-cache-dir .
ENV CONFLUX_HOME=/var/lib/conflux CONFLUX_ROOT=/app
USER nobody
CMD ["conflux", "--help"]
