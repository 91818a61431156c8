"""The echo models' answer: the prompt's words in turn, one piece a token, as many as `max_tokens` asks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from model_runtime.tensors import input_text

DEFAULT_TOKENS = 16
MAX_TOKENS_CAP = 4096


def pieces(pb_utils: Any, request: Any) -> Iterator[str]:
    words = input_text(pb_utils, request, "text_input").split() or ["echo"]
    limit = pb_utils.get_input_tensor_by_name(request, "max_tokens")
    n = int(limit.as_numpy().reshape(-1)[0]) if limit is not None else DEFAULT_TOKENS
    for i in range(max(0, min(n, MAX_TOKENS_CAP))):
        yield (" " if i else "") + words[i % len(words)]
