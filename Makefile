# Conflux: `make up` starts the whole local platform and runs a short demo; `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Reinstall the Python dependencies only when pyproject.toml changes.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml triton_models/requirements-no-deps.txt | sha1sum | cut -c1-12)

.PHONY: install install-node install-agents models-env tool-eval up down status demo test test-unit test-integration test-faults lint clean bench bench-cache bench-sink bench-workflow \
	bench-freshness soak safety-eval safety-model paraphrase-data semantic-eval eval

$(STAMP): pyproject.toml triton_models/requirements-no-deps.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -r triton_models/requirements-no-deps.txt
	@rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP)

up: install
	$(BIN)/conflux up
	$(BIN)/conflux demo

down:
	@if [ -x $(BIN)/conflux ]; then $(BIN)/conflux down; else echo "nothing to stop (no $(BIN)/conflux)"; fi

status: install
	$(BIN)/conflux status

demo: install
	$(BIN)/conflux demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

# The test session itself starts the services it needs (see tests/conftest.py).
test: lint install-node install-agents models-env
	@command -v chromium >/dev/null || { echo "installing Debian's chromium for the dashboard test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	$(BIN)/pytest

test-unit: install models-env
	$(BIN)/pytest -m "not integration"

test-integration: install
	$(BIN)/pytest -m integration

# Kill or stop parts of the running stack and check nothing was lost (also part of `make test`).
test-faults: install
	$(BIN)/pytest -m faults

clean: down
	rm -rf .conflux

# Time to first token through the platform vs direct Triton, echo and SmolLM2 at 1/8/32 streams.
bench: install
	$(BIN)/conflux up
	$(BIN)/python -m producers.bench

# Exact-cache hit TTFT through the platform vs the chain on the same requests (goal: p50 <= 10 ms).
bench-cache: install
	$(BIN)/conflux up
	$(BIN)/python -m producers.cache_bench

# ClickHouse sink throughput from a backlog (goal: 20,000 events/s).
bench-sink: install
	$(BIN)/conflux up
	$(BIN)/python -m producers.sink_bench

# Freshness: answer delivered -> visible in the metrics API, under 8 streams of load (goal p99 < 5 s).
bench-freshness: install
	$(BIN)/conflux up
	$(BIN)/python -m producers.freshness_bench

# The article workflow: 4 sections on Qwen2.5-Coder-0.5B and on SmolLM2 with two workers (goal < 3 min), step
# overhead on echo (p50 <= 20 ms).
bench-workflow: install
	$(BIN)/conflux up
	$(BIN)/python -m producers.workflow_bench

# 10 minutes of constant load: throughput, latency per minute, errors, memory of every service (<= 10% growth).
soak: install
	$(BIN)/conflux up
	$(BIN)/python -m producers.soak

# The safety prefilter from pinned external data (downloads seven wheels' data: seconds), then the classifier,
# which adds the prefilter's logit and a vote of the nearest training prompts to its own (embeds ~9,900 prompts:
# minutes). Writes conflux/safety_prefilter.npz, conflux/safety_head.json, conflux/safety_neighbours.npz and
# tests/data/external/safety_{test,heldout}.jsonl; commit them. CI never runs it.
safety-model: install
	$(BIN)/python -m producers.prefilter_train
	$(BIN)/python -m producers.safety_train

# Precision, recall, F1 and false-positive rate of the input-safety checks: held-out external split, test split,
# the team's own set; per category; CPU per check.
safety-eval: install
	$(BIN)/conflux up
	$(BIN)/python -m producers.safety_eval

# The semantic cache's labelled pairs from a pinned external wheel (contradish, MIT): writes
# tests/data/external/paraphrase_{tune,heldout}.jsonl; commit both. CI never runs it (a test checks they match).
paraphrase-data: install
	$(BIN)/python -m producers.paraphrase_data

# Precision and recall of the semantic cache's threshold on those pairs (tuned on one split, reported on both).
semantic-eval: install
	$(BIN)/python -m producers.semantic_eval

# Answer quality on public reading-comprehension data (the SQuAD, TriviaQA and DROP fixtures inside the allennlp
# 0.9.0 wheel, data only), asked through the chat API of each model and `auto`: retrieval recall@k, answer accuracy,
# groundedness, hallucination rate, tokens/s. About 15 minutes; writes .conflux/bench/eval.json. CI never runs it.
eval: install
	$(BIN)/conflux up
	$(BIN)/python -m producers.qa_eval

install-node:  # the official openai npm package, for tests/integration/test_node_client.py
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error

tool-eval: install
	$(BIN)/conflux up
	$(BIN)/python -m producers.tool_eval

AGENTS_VENV := .conflux/agents-venv
install-agents: $(AGENTS_VENV)/.installed  # the OpenAI Agents SDK in its own venv (its pins never touch ours)
$(AGENTS_VENV)/.installed:
	@test -x $(AGENTS_VENV)/bin/python || $(PYTHON) -m venv $(AGENTS_VENV)
	$(AGENTS_VENV)/bin/pip install -q --disable-pip-version-check openai-agents==0.24.0
	touch $@

# A venv with only the Triton models' requirements (not the platform): tests/unit/test_triton_models.py runs each
# model's model.py in it, so a model that imports the platform's package fails the tests. Same Python as $(VENV),
# so pip reuses the llama-cpp-python wheel it built there.
MODELS_VENV := .conflux/models-venv
MODELS_STAMP := $(MODELS_VENV)/.installed-$(shell cat triton_models/requirements*.txt | sha1sum | cut -c1-12)
models-env: $(MODELS_STAMP)
$(MODELS_STAMP): triton_models/requirements.txt triton_models/requirements-no-deps.txt | install
	@test -x $(MODELS_VENV)/bin/python || $(BIN)/python -m venv $(MODELS_VENV)
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(MODELS_VENV)/bin/pip install -q --disable-pip-version-check -r triton_models/requirements.txt
	$(MODELS_VENV)/bin/pip install -q --disable-pip-version-check --no-deps -r triton_models/requirements-no-deps.txt
	@rm -f $(MODELS_VENV)/.installed-*; touch $@
