"""Text in and out of Triton tensors, for every model here. `pb_utils` is passed in: Triton's Python backend
gives each model process its own triton_python_backend_utils, which nothing outside a model can import."""

from __future__ import annotations

from typing import Any

import numpy as np


def text_tensor(pb_utils: Any, name: str, text: str) -> Any:
    """A BYTES[1] output tensor holding `text` as UTF-8."""
    return pb_utils.Tensor(name, np.array([text.encode()], dtype=np.object_))


def input_text(pb_utils: Any, request: Any, name: str) -> str:
    """The first element of a BYTES input, decoded (invalid UTF-8 replaced, never an error)."""
    raw = pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0]
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
