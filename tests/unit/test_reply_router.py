"""The edge's reply router hands each request its chunks once: a chunk delivered again (Kafka delivery is
at least once, and a producer replaced after a broker restart sends again) must not repeat text."""

from __future__ import annotations

from typing import Any

from conflux.serde import AvroSerde, new_envelope
from edge.replies import ReplyRouter


def chunk(serde: AvroSerde, request_id: str, seq: int, text: str, final: bool = False,
          epoch: int | None = None) -> bytes:
    return serde.encode("token_chunk", {
        "envelope": new_envelope(tenant_id="t", conversation_id="c", request_id=request_id, producer="w"),
        "sequence": seq, "text": text, "is_final": final, "finish_reason": "stop" if final else None,
        "error": None, "model": None, "prompt_tokens": None, "completion_tokens": None, "epoch": epoch})


def texts(q: Any) -> list[str]:
    out = []
    while not q.empty():
        out.append(q.get_nowait()["text"])
    return out


def test_a_repeated_chunk_is_dropped_and_the_answer_reads_once(serde: AvroSerde) -> None:
    router = ReplyRouter("unused:9092", "chat.replies.e", serde)
    q = router.register("r1")
    for seq, text in [(0, "Hello"), (1, " world"), (1, " world"), (0, "Hello"), (2, "!")]:
        router._dispatch(chunk(serde, "r1", seq, text))
    router._dispatch(chunk(serde, "r1", 3, "", final=True))
    assert texts(q) == ["Hello", " world", "!", ""]


def test_sequences_are_per_request_and_forgotten_on_unregister(serde: AvroSerde) -> None:
    router = ReplyRouter("unused:9092", "chat.replies.e", serde)
    a, b = router.register("a"), router.register("b")
    router._dispatch(chunk(serde, "a", 0, "A0"))
    router._dispatch(chunk(serde, "b", 0, "B0"))
    assert texts(a) == ["A0"] and texts(b) == ["B0"]
    router.unregister("a")
    router._dispatch(chunk(serde, "a", 1, "late"))  # the caller left: nothing kept for it
    assert router.open_requests == 1 and router._next_seq == {"b": 1}


def test_a_final_chunk_always_passes(serde: AvroSerde) -> None:
    # An error final written by a worker that took the request over may carry an earlier sequence number.
    router = ReplyRouter("unused:9092", "chat.replies.e", serde)
    q = router.register("r")
    router._dispatch(chunk(serde, "r", 0, "part"))
    router._dispatch(chunk(serde, "r", 0, "", final=True))
    assert texts(q) == ["part", ""]


def test_chunks_of_a_generation_that_was_taken_over_never_reach_the_caller(serde: AvroSerde) -> None:
    """A worker stalls mid-answer (epoch 1), another takes the generation over (epoch 2) and ends it; the
    stalled one resumes. Whatever order their chunks arrive in, none of epoch 1's after the takeover pass."""
    router = ReplyRouter("unused:9092", "chat.replies.e", serde)
    q = router.register("r")
    router._dispatch(chunk(serde, "r", 0, "old-0", epoch=1), live_epoch=1)  # before the takeover: delivered
    # After the takeover the live epoch is 2: the resumed worker's chunks are dropped even when they come first.
    router._dispatch(chunk(serde, "r", 1, "old-1", epoch=1), live_epoch=2)
    router._dispatch(chunk(serde, "r", 0, "new-final", final=True, epoch=2), live_epoch=2)
    router._dispatch(chunk(serde, "r", 2, "old-2", epoch=1), live_epoch=2)
    router._dispatch(chunk(serde, "r", 3, "old-final", final=True, epoch=1), live_epoch=2)
    assert texts(q) == ["old-0", "new-final"]


def test_a_new_epoch_numbers_its_chunks_from_zero_and_an_older_one_stays_out(serde: AvroSerde) -> None:
    router = ReplyRouter("unused:9092", "chat.replies.e", serde)
    q = router.register("r")
    router._dispatch(chunk(serde, "r", 0, "a", epoch=1))
    router._dispatch(chunk(serde, "r", 1, "b", epoch=1))
    router._dispatch(chunk(serde, "r", 0, "A", epoch=2))  # Redis unreachable (no live epoch): still ordered
    router._dispatch(chunk(serde, "r", 2, "c", epoch=1))
    router._dispatch(chunk(serde, "r", 1, "B", epoch=2))
    assert texts(q) == ["a", "b", "A", "B"]

