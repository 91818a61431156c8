"""Once-per-request claims across workers (streams/once.py), and session memory failing open."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from functools import partial
from types import SimpleNamespace
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from conflux import taxonomy
from conflux.kafka import PendingEvents
from conflux.promserve import Metrics
from conflux.safety_model import Judgement
from streams import once as once_module
from streams.context import ContextStore
from streams.deps import Deps
from streams.once import Claim, Once
from streams.prompt_build import Built, recall
from streams.request import RequestContext


class FakeRedis:
    """The few commands Once uses, with NX semantics; expiry is not modelled. A read yields to the event loop
    after reading, as a round trip to Redis does, so that concurrent claims interleave."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    async def set(self, key: str, value: str, nx: bool = False, ex: int | None = None) -> bool:
        if nx and key in self.data:
            return False
        self.data[key] = value.encode()
        return True

    async def get(self, key: str) -> bytes | None:
        value = self.data.get(key)
        await asyncio.sleep(0)  # the reply is on its way back while other clients' commands run
        return value

    async def eval(self, script: str, numkeys: int, *args: Any) -> int:
        assert script == once_module._TAKE_OVER  # the one script `claim` runs: a compare-and-set, atomic here too
        key, seen, holder, _ttl = args
        if (current := self.data.get(key)) is None or current.decode() == seen:
            self.data[key] = holder.encode()
            return 1
        return 0

    async def exists(self, key: str) -> int:
        return int(key in self.data)

    async def delete(self, key: str) -> int:
        return int(self.data.pop(key, None) is not None)

    def register_script(self, script: str) -> Any:
        async def not_here(**_: Any) -> None:
            raise AssertionError("these tests run `claim` alone; the one-round-trip claims run against Redis")
        return not_here


async def test_first_claim_wins_and_done_is_final() -> None:
    r = FakeRedis()
    a, b = Once(r, "w1"), Once(r, "w2")
    await r.set("conflux:worker:w1:heartbeat", "1")
    assert await a.claim("end", "r1") is Claim.MINE
    assert await a.claim("end", "r1") is Claim.BUSY  # a second actor of the same live process
    assert await b.claim("end", "r1") is Claim.BUSY  # another worker while w1 is alive
    await a.done("end", "r1")
    assert await b.claim("end", "r1") is Claim.DONE and await b.is_done("end", "r1")


async def test_a_dead_holders_claim_is_taken_over() -> None:
    r = FakeRedis()
    assert await Once(r, "w1").claim("gen", "r2") is Claim.MINE  # w1 has no heartbeat: it died
    assert await Once(r, "w2").claim("gen", "r2") is Claim.ORPHANED
    assert r.data["conflux:once:gen:r2"] == b"w2"
    # A restarted process with the same id is a new incarnation: its predecessor's claim is orphaned too.
    assert await Once(r, "w2").claim("gen", "r2") is Claim.ORPHANED


async def test_of_two_workers_that_see_the_same_dead_holder_one_takes_over() -> None:
    r = FakeRedis()
    assert await Once(r, "w1").claim("gen", "r4") is Claim.MINE  # w1 dies holding it
    for w in ("w2", "w3"):
        await r.set(f"conflux:worker:{w}:heartbeat", "1")
    # Both read w1 as the holder before either writes; only one may take over, the other finds it busy.
    claims = await asyncio.gather(Once(r, "w2").claim("gen", "r4"), Once(r, "w3").claim("gen", "r4"))
    assert sorted(c.value for c in claims) == ["busy", "orphaned"]
    assert r.data["conflux:once:gen:r4"] == (b"w2" if claims[0] is Claim.ORPHANED else b"w3")


async def test_release_lets_a_replay_start_again() -> None:
    r = FakeRedis()
    once = Once(r, "w1")
    assert await once.claim("end", "r3") is Claim.MINE
    await once.release("end", "r3")
    assert await once.claim("end", "r3") is Claim.MINE


async def _held(monkeypatch: pytest.MonkeyPatch, what: str, rid: str) -> tuple[FakeRedis, Once]:
    """A claim held by w1, a worker whose heartbeat is live; replays poll it quickly."""
    monkeypatch.setattr(once_module, "BUSY_POLL_S", 0.01)
    r = FakeRedis()
    await r.set("conflux:worker:w1:heartbeat", "1")
    holder = Once(r, "w1")
    assert await holder.claim(what, rid) is Claim.MINE
    return r, holder


async def test_a_replay_waits_for_a_live_holder_and_takes_over_when_it_dies(monkeypatch: pytest.MonkeyPatch) -> None:
    """A killed worker's heartbeat outlives it by up to its TTL, and the replay of its request can arrive before
    that: the replay waits, and takes the claim over once the heartbeat is gone (it used to walk away BUSY, and
    the request never got an answer)."""
    r, _ = await _held(monkeypatch, "gen", "r5")
    replay = asyncio.create_task(Once(r, "w2").claim("gen", "r5", wait_until=time.time() + 10))
    await asyncio.sleep(0.05)
    assert not replay.done()  # w1 still looks alive
    await r.delete("conflux:worker:w1:heartbeat")  # its TTL runs out
    assert await asyncio.wait_for(replay, 1) is Claim.ORPHANED
    assert r.data["conflux:once:gen:r5"] == b"w2"


async def test_a_replay_waits_for_a_live_holder_to_finish(monkeypatch: pytest.MonkeyPatch) -> None:
    r, holder = await _held(monkeypatch, "end", "r6")
    replay = asyncio.create_task(Once(r, "w2").claim("end", "r6", wait_until=time.time() + 10))
    await asyncio.sleep(0.05)
    await holder.done("end", "r6")
    assert await asyncio.wait_for(replay, 1) is Claim.DONE


async def test_a_replay_stops_waiting_when_the_request_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    r, holder = await _held(monkeypatch, "gen", "r7")
    t0 = time.monotonic()
    assert await Once(r, "w2").claim("gen", "r7", wait_until=time.time() + 0.1) is Claim.BUSY
    assert 0.1 <= time.monotonic() - t0 < 1
    # Another actor of the holder's own process is not waited for: it would die with the holder.
    t0 = time.monotonic()
    assert await holder.claim("gen", "r7", wait_until=time.time() + 10) is Claim.BUSY
    assert time.monotonic() - t0 < 0.1


def test_a_request_expires_when_no_edge_waits_for_it_any_longer() -> None:
    sent = dt.datetime(2026, 12, 2, 10, 0, tzinfo=dt.UTC)
    assert once_module.expires_at({"envelope": {"event_time": sent}}, 60.0) == sent.timestamp() + 65.0


async def test_session_memory_fails_open() -> None:
    class DownStore:
        async def memory(self, *args: Any) -> list[dict[str, str]]:
            raise RedisConnectionError("connection refused")

        turns = staticmethod(ContextStore.turns)

    metrics = Metrics("t", {})
    deps: Any = SimpleNamespace(ctx=DownStore(), metrics=metrics)
    rc: Any = SimpleNamespace(request={"messages": [{"role": "user", "content": "hi"}]}, request_id="r",
                              env={"tenant_id": "t", "conversation_id": "c", "request_id": "r"}, memory=None)
    assert await recall(deps, rc) == []  # read now, and Redis is down
    assert "memory_unavailable_total" in metrics.render()
    # Read with the request (pipeline.handle's first round trip): its error fails open the same way...
    rc.memory = RedisConnectionError("connection reset")
    assert await recall(deps, rc) == []
    assert "t_memory_unavailable_total{} 2" in metrics.render()
    # ...and its reply is the turns, oldest first, without another round trip (DownStore would raise).
    rc.memory = [b'{"role": "user", "content": "hi"}', b'{"role": "assistant", "content": "hello"}']
    assert await recall(deps, rc) == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def test_response_ids_prove_their_tenant() -> None:
    from conflux.ids import ResponseIds

    ids = ResponseIds(b"0123456789abcdef0123")
    rid = ids.new("tenant-a")
    assert rid.startswith("chatcmpl-") and len(rid) == len("chatcmpl-") + 48
    assert ids.owned_by(rid, "tenant-a")
    assert not ids.owned_by(rid, "tenant-b")  # another tenant's id looks unknown
    assert not ids.owned_by(rid, "tenant-a|x") and not ids.owned_by("chatcmpl-nope", "tenant-a")
    assert not ResponseIds(b"another-secret-of-20").owned_by(rid, "tenant-a")  # another deployment's id


async def test_the_streamed_mark_is_written_before_the_first_chunk_can_leave() -> None:
    """A replay decides "restart" or "explicit error" from this mark: written after (or beside) the first
    chunk, a kill -9 between the two spliced a second answer behind the first piece (a CI failure)."""
    from conflux.inference import Piece
    from streams import inference

    log: list[str] = []

    class Ctx:
        async def put(self, request_id: str, **fields: Any) -> None:
            log.extend(f"mark:{k}" for k in fields if k == "streamed")

        async def cancelled(self, request_id: str) -> bool:
            return False

    class Producer:
        async def send(self, topic: str, **kwargs: Any) -> Any:
            log.append(f"send:{topic}")
            fut = asyncio.get_running_loop().create_future()
            fut.set_result(None)
            return fut

    class Triton:
        async def stream(self, *args: Any, **kwargs: Any) -> Any:
            for text in ("a", "b"):
                yield Piece(text, 0.0)

        async def embed(self, texts: list[str]) -> Any:  # the output check's
            return [[0.0] * 384 for _ in texts]

    class Publisher:
        async def publish(self, *args: Any, **kwargs: Any) -> None:
            return None

    class Events(PendingEvents):  # the gate (wait_open) is the real, always-open one
        def __init__(self) -> None:
            super().__init__(publisher=None)  # type: ignore[arg-type]  # nothing is published

        def track(self, fut: Any) -> None:
            return None

        async def add(self, *args: Any, **kwargs: Any) -> None:
            return None

        async def settle(self) -> None:
            return None

    model = SimpleNamespace(id="m", template="raw", triton_stream="echo", cost=lambda p, c: 0.0)
    deps: Any = SimpleNamespace(
        producer=Producer(), ctx=Ctx(), triton=Triton(), serde=SimpleNamespace(encode=lambda name, record: b"x"),
        envelope=lambda env: env, inference_timeout_s=5.0, generate_before_verdict=False,
        safety=SimpleNamespace(judge=lambda vec: Judgement(0.0, False, "hate", 0.0, {})))
    deps.stream_chunk = partial(Deps.stream_chunk, deps)  # the real one, over these fakes
    request = {"max_tokens": 2, "temperature": 0.0, "reply_topic": "replies", "reply_partition": 0,
               "envelope": {"request_id": "r1", "conversation_id": "c1"}, "messages": []}
    rc = RequestContext(request=request, plan="free", system_prompt="", started=0.0, events=Events(),  # type: ignore[arg-type]
                        policy=taxonomy.load().policy())
    built = Built([{"role": "user", "content": "q"}], 1)
    await inference._generate(deps, rc, model, built, epoch=1, guide=None)  # type: ignore[arg-type]
    assert log[0] == "mark:streamed" and log.index("send:replies") > 0, log


async def test_a_retry_after_part_of_the_answer_left_ends_with_an_error_instead_of_generating_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The stage retries a request whose chunks were not acknowledged (broker away). Its own generation claim
    was released, so the retry holds a fresh one; the streamed mark, not the claim, must decide."""
    from streams import inference
    from streams.once import Claim

    ended: list[str] = []

    class Once:
        async def claim_generation(self, rid: str, streamed_key: str, wait_until: float) -> tuple[Claim, int, bool]:
            return Claim.MINE, 2, True  # its own claim (released by the failed try), and the streamed mark

    class Ctx:
        def key(self, rid: str) -> str:
            return f"ctx:{rid}"

    async def finish_with_error(request: dict[str, Any], message: str, **kwargs: Any) -> None:
        ended.append(message)
        assert kwargs["epoch"] == 2  # the error is sent under the epoch that now holds the generation

    async def must_not_generate(*args: Any) -> None:
        raise AssertionError("generated again behind a partly delivered answer")

    deps: Any = SimpleNamespace(once=Once(), ctx=Ctx(), finish_with_error=finish_with_error, inference_timeout_s=60.0)
    monkeypatch.setattr(inference, "_generate", must_not_generate)
    request = {"reply_topic": "replies", "messages": [],
               "envelope": {"request_id": "r1", "conversation_id": "c1", "event_time": None}}
    rc = RequestContext(request=request, plan="free", system_prompt="", started=0.0, events=None,  # type: ignore[arg-type]
                        policy=taxonomy.load().policy())
    assert await inference.generate(deps, rc, SimpleNamespace(), Built([], 0)) is None  # type: ignore[arg-type]
    assert ended == ["generation was interrupted by a broker or Redis failure; retry the request"]


def test_a_recorded_ending_reads_back_as_it_was_recorded() -> None:
    """The hash fields a request's end is recorded in (streams/ending.py) give back its events in order, with
    their event ids, its final chunk and its charge; a context hash without them records no ending."""
    from conflux.schemas import SchemaRegistry
    from conflux.serde import AvroSerde, new_envelope
    from conflux.topics import load_catalogue
    from streams.ending import Ending

    serde = AvroSerde(SchemaRegistry())
    env = {"tenant_id": "t", "conversation_id": "a conversation", "request_id": "r"}
    verdict: dict[str, Any] = {"envelope": new_envelope(**env, producer="w"), "stage": "OUTPUT", "verdict": "ALLOW",
               "categories": [], "reasons": [], "score": 0.1, "checker": "c", "latency_ms": 1.0}
    response: dict[str, Any] = {"envelope": new_envelope(**env, producer="w"), "model": "echo", "content": "hi",
                "finish_reason": "stop", "blocked": False, "error": None, "prompt_tokens": 1, "completion_tokens": 2,
                "citations": [], "latency_ms": 2.0, "cost_micros": 5, "key_id": ""}
    final = {"envelope": new_envelope(**env, producer="w"), "sequence": 2, "text": "", "is_final": True,
             "finish_reason": "stop", "error": None, "model": "echo", "prompt_tokens": 1, "completion_tokens": 2,
             "epoch": 3}
    ending = Ending(key="a conversation", events=[("safety.verdicts", verdict), ("chat.responses", response)],
                    final=final, micros=5, tokens=3)
    fields = ending.fields(serde, load_catalogue(registry=serde.registry))
    back = Ending.recorded(serde, {b"streamed": b"true", **{k.encode(): v for k, v in fields.items()}})
    assert back is not None and back.key == "a conversation" and (back.micros, back.tokens) == (5, 3)
    assert [(t, r["envelope"]["event_id"], r.get("content")) for t, r in back.events] == [
        ("safety.verdicts", verdict["envelope"]["event_id"], None), ("chat.responses", response["envelope"]["event_id"],
                                                                      "hi")]
    assert back.final is not None and back.final["epoch"] == 3 and back.final["sequence"] == 2
    assert Ending.recorded(serde, {b"streamed": b"true"}) is None
