"""A stand-in for the module Triton's Python backend gives each model: just the parts the models in
triton_models/ use, with the same names and call shapes, so a model's model.py runs outside Triton
(tests/unit/test_triton_models.py runs each one in a venv holding only triton_models/requirements*.txt)."""

import threading

import numpy as np

TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1


class TritonError:
    def __init__(self, message):
        self._message = message

    def message(self):
        return self._message


class Tensor:
    def __init__(self, name, array):
        if not isinstance(array, np.ndarray):
            raise TypeError(f"Tensor {name!r}: a numpy array, not {type(array).__name__}")
        self._name, self._array = name, array

    def name(self):
        return self._name

    def as_numpy(self):
        return self._array


class InferenceResponse:
    def __init__(self, output_tensors=None, error=None):
        self.output_tensors, self.error = list(output_tensors or []), error


class ResponseSender:
    """Collects what a decoupled model sends; `done` is set by the final flag (sending after it is an error,
    as in Triton)."""

    def __init__(self):
        self.sent, self.done = [], threading.Event()

    def send(self, response=None, flags=0):
        if self.done.is_set():
            raise RuntimeError("a response was sent after the final flag")
        self.sent.append((response, flags))
        if flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            self.done.set()


class InferenceRequest:
    def __init__(self, inputs, cancelled=False):
        self._inputs = inputs  # name -> Tensor
        self._sender = ResponseSender()
        self.cancelled = cancelled

    def get_response_sender(self):
        return self._sender

    def is_cancelled(self):
        return self.cancelled


def get_input_tensor_by_name(request, name):
    return request._inputs.get(name)
