#!/usr/bin/env bash
# Builds a TensorRT-LLM engine and an inflight_batcher_llm Triton repository for it.
# Runs INSIDE nvcr.io/nvidia/tritonserver:<yy.mm>-trtllm-python-py3 on a GPU machine (docker-compose
# service `trtllm-prepare`, profile gpu). Idempotent: an existing engine or repository is kept.
#
#   HF_MODEL_DIR   Hugging Face checkpoint (mounted; no download at run time), e.g. /hf/Llama-3.1-8B-Instruct
#   ENGINE_DIR     where the engine goes                       (default /engines/llama-3.1-8b-instruct)
#   REPO_DIR       where the Triton repository goes            (default /trtllm_repo)
#   TRTLLM_SRC     TensorRT-LLM source of the SAME version as the container's tensorrt_llm (its
#                  triton_backend/ has the model templates and fill_template.py), e.g. a checkout of the tag
#                  printed by: python3 -c "import tensorrt_llm; print(tensorrt_llm.__version__)"
#   MAX_BATCH      in-flight batch size (default 64); MAX_INPUT / MAX_OUTPUT tokens (default 4096 / 2048)
#   TP_SIZE        tensor parallelism (default 1)
set -euo pipefail
: "${HF_MODEL_DIR:?set HF_MODEL_DIR to a local Hugging Face checkpoint}"
: "${TRTLLM_SRC:?set TRTLLM_SRC to a TensorRT-LLM checkout matching the container}"
ENGINE_DIR=${ENGINE_DIR:-/engines/llama-3.1-8b-instruct}
REPO_DIR=${REPO_DIR:-/trtllm_repo}
MAX_BATCH=${MAX_BATCH:-64}
MAX_INPUT=${MAX_INPUT:-4096}
MAX_OUTPUT=${MAX_OUTPUT:-2048}
TP_SIZE=${TP_SIZE:-1}
CKPT_DIR=${ENGINE_DIR}.ckpt
log() { echo "[trtllm $(date +%H:%M:%S)] $*"; }

if [ ! -f "$ENGINE_DIR/config.json" ]; then
  log "converting $HF_MODEL_DIR to a TensorRT-LLM checkpoint (bf16, tp=$TP_SIZE)"
  python3 "$TRTLLM_SRC/examples/models/core/llama/convert_checkpoint.py" --model_dir "$HF_MODEL_DIR" \
    --output_dir "$CKPT_DIR" --dtype bfloat16 --tp_size "$TP_SIZE"
  log "building the engine (paged KV cache, in-flight batching, max batch $MAX_BATCH)"
  trtllm-build --checkpoint_dir "$CKPT_DIR" --output_dir "$ENGINE_DIR" \
    --gemm_plugin auto --gpt_attention_plugin auto --paged_kv_cache enable --remove_input_padding enable \
    --max_batch_size "$MAX_BATCH" --max_input_len "$MAX_INPUT" --max_seq_len $((MAX_INPUT + MAX_OUTPUT))
else
  log "engine present: $ENGINE_DIR"
fi

if [ ! -f "$REPO_DIR/ensemble/config.pbtxt" ]; then
  log "preparing the inflight_batcher_llm repository in $REPO_DIR"
  mkdir -p "$REPO_DIR"
  cp -r "$TRTLLM_SRC/triton_backend/all_models/inflight_batcher_llm/"{preprocessing,tensorrt_llm,postprocessing,ensemble} "$REPO_DIR/"
  fill="python3 $TRTLLM_SRC/triton_backend/tools/fill_template.py -i"
  $fill "$REPO_DIR/preprocessing/config.pbtxt" \
    "tokenizer_dir:$HF_MODEL_DIR,triton_max_batch_size:$MAX_BATCH,preprocessing_instance_count:1"
  $fill "$REPO_DIR/postprocessing/config.pbtxt" \
    "tokenizer_dir:$HF_MODEL_DIR,triton_max_batch_size:$MAX_BATCH,postprocessing_instance_count:1"
  # decoupled_mode:True = token streaming, as Conflux's inference stage consumes it.
  $fill "$REPO_DIR/tensorrt_llm/config.pbtxt" \
    "triton_backend:tensorrtllm,triton_max_batch_size:$MAX_BATCH,decoupled_mode:True,max_beam_width:1,engine_dir:$ENGINE_DIR,max_queue_delay_microseconds:1000,batching_strategy:inflight_fused_batching,kv_cache_free_gpu_mem_fraction:0.9,exclude_input_in_output:True,enable_kv_cache_reuse:True,encoder_input_features_data_type:TYPE_FP16,logits_datatype:TYPE_FP32"
  $fill "$REPO_DIR/ensemble/config.pbtxt" "triton_max_batch_size:$MAX_BATCH,logits_datatype:TYPE_FP32"
else
  log "repository present: $REPO_DIR"
fi
log "done: serve with tritonserver --model-repository=$REPO_DIR (model 'ensemble': text_input, max_tokens, temperature, stream -> text_output)"
