"""TritonClient.stream with a fake gRPC stream: a broken stream is an InferenceError (the stage answers
"the model server failed"), and after the final response the stream is read to its end, not cancelled; Triton
refusing the model-index call is an InferenceError too."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np
import pytest

from conflux import inference
from conflux.inference import InferenceError, TritonClient


class Result:
    def __init__(self, text: str, final: bool) -> None:
        self._text, self._final = text, final

    def as_numpy(self, _name: str) -> Any:
        return np.array([[self._text.encode()]], dtype=np.object_) if self._text else None

    def get_response(self) -> Any:
        flag = SimpleNamespace(bool_param=True) if self._final else None
        return SimpleNamespace(parameters={"triton_final_response": flag} if flag else {})


class Broken(grpc.RpcError):  # type: ignore[misc]  # grpc ships no type hints
    def details(self) -> str:
        return "Socket closed"


class Responses:
    """What tritonclient's stream_infer returns: (result, error) pairs, then the server's end of stream."""

    def __init__(self, items: list[Any], then: str = "end") -> None:
        self.items, self.then = list(items), then
        self.cancelled = self.ended = False

    def __aiter__(self) -> Responses:
        return self

    async def __anext__(self) -> Any:
        if self.items:
            item = self.items.pop(0)
            if isinstance(item, Exception):
                raise item
            return item, None
        if self.then == "hang":
            await asyncio.sleep(3600)
        self.ended = True
        raise StopAsyncIteration

    def cancel(self) -> bool:
        self.cancelled = True
        return True


def client_with(responses: Responses) -> TritonClient:
    client = TritonClient("127.0.0.1:1")  # never dialled: the fake stands in for the channel
    client._client = SimpleNamespace(stream_infer=lambda *_a, **_k: responses)
    return client


async def pieces(client: TritonClient) -> list[str]:
    return [p.text async for p in client.stream("echo", "hi", 4)]


async def test_after_the_final_response_the_stream_is_read_to_its_end() -> None:
    responses = Responses([Result("a", False), Result("b", False), Result("", True)])
    assert await pieces(client_with(responses)) == ["a", "b"]
    assert responses.ended and not responses.cancelled


async def test_a_stream_the_server_leaves_open_is_cancelled_after_the_drain_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inference, "DRAIN_S", 0.05)
    responses = Responses([Result("a", False), Result("", True)], then="hang")
    assert await asyncio.wait_for(pieces(client_with(responses)), 5) == ["a"]
    assert responses.cancelled


async def test_a_stream_that_breaks_mid_answer_is_an_inference_error() -> None:
    responses = Responses([Result("a", False), Broken()])
    with pytest.raises(InferenceError, match="Socket closed"):
        await pieces(client_with(responses))


async def test_a_stream_that_ends_without_a_final_response_is_an_inference_error() -> None:
    with pytest.raises(InferenceError, match="without a final response"):
        await pieces(client_with(Responses([Result("a", False)])))


async def test_triton_down_when_routing_asks_for_the_ready_models_is_an_inference_error() -> None:
    """The routing stage asks for the model index; with Triton down that is "the model server is unavailable",
    not an unexpected error (a prompt the safety prefilter clears reaches routing without an embedding)."""
    from tritonclient.utils import InferenceServerException

    async def refused(**_k: Any) -> Any:
        raise InferenceServerException("[StatusCode.UNAVAILABLE] failed to connect to all addresses")

    client = TritonClient("127.0.0.1:1")
    client._client = SimpleNamespace(get_model_repository_index=refused)
    with pytest.raises(InferenceError, match=r"model repository: .*UNAVAILABLE"):
        await client.repository_index()
