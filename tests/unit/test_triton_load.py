"""Load-aware routing: Triton's metrics into each model's queue, and auto's choice under a latency target."""

from __future__ import annotations

from dataclasses import replace

import pytest

from conflux.models import ModelCatalogue, load_models
from conflux.routing import Features, route
from conflux.triton_load import ModelLoad, load, parse

METRICS = """# HELP nv_inference_pending_request_count Instantaneous number of pending requests
nv_inference_request_success{{model="smollm2",version="1"}} {done}
nv_inference_request_failure{{model="smollm2",reason="BACKEND",version="1"}} 1
nv_inference_request_failure{{model="smollm2",reason="CANCELED",version="1"}} 1
nv_inference_request_duration_us{{model="smollm2",version="1"}} {busy}
nv_inference_queue_duration_us{{model="smollm2",version="1"}} {queue}
nv_inference_pending_request_count{{model="smollm2",version="1"}} {pending}
nv_inference_count{{model="smollm2",version="1"}} 999
nv_inference_pending_request_count{{model="echo",version="1"}} 0
"""


def _text(done: int, queue_us: int, busy_us: int, pending: int) -> str:
    return METRICS.format(done=done, queue=queue_us, busy=busy_us, pending=pending)


def test_queue_time_is_the_mean_over_the_requests_done_since_the_last_sample() -> None:
    before = parse(_text(8, 1_000_000, 9_000_000, 0))
    assert before["smollm2"].done == 10  # successes and failures of every reason
    now = parse(_text(18, 3_000_000, 19_000_000, 3))
    seen = load(before, now)["smollm2"]
    assert seen.pending == 3 and seen.queue_ms == pytest.approx(200.0) and seen.request_ms == pytest.approx(1000.0)
    # three waiting ahead, each about 800 ms of work: longer than the recent queue time
    assert seen.wait_ms == pytest.approx(2400.0)
    assert load(before, now)["echo"] == ModelLoad(0, 0.0)


def test_a_backlog_is_priced_at_the_models_last_known_pace_while_nothing_finishes() -> None:
    """A slow model working through its queue finishes nothing for seconds; its backlog must still show."""
    before = parse(_text(8, 1_000_000, 9_000_000, 0))
    paced = load(before, parse(_text(18, 3_000_000, 19_000_000, 1)))["smollm2"]  # 800 ms of service each
    busy = parse(_text(18, 3_000_000, 19_000_000, 3))  # nothing finished since; three now wait
    assert load(busy, busy)["smollm2"].wait_ms == 0.0  # no history: blind, as before
    seen = load(busy, busy, {"smollm2": paced})["smollm2"]
    assert seen.queue_ms == 0.0 and seen.wait_ms == pytest.approx(2400.0)


def test_no_request_done_or_a_restarted_triton_reads_as_no_queue_time() -> None:
    a = parse(_text(8, 1_000_000, 9_000_000, 2))
    assert load(a, a)["smollm2"] == ModelLoad(2, 0.0)
    restarted = parse(_text(1, 10, 100, 0))
    assert load(a, restarted)["smollm2"].queue_ms == 0.0


@pytest.fixture(scope="module")
def cat() -> ModelCatalogue:
    return load_models()


HARD = Features(prompt_tokens=30, max_output_tokens=64, turns=1, text="Prove that the algorithm terminates")
EASY = replace(HARD, text="hello")
SERVED = {"smollm2", "echo", "ensemble"}


def test_auto_records_the_load_it_saw(cat: ModelCatalogue) -> None:
    seen = {"smollm2": ModelLoad(1, 30.0, 500.0), "ensemble": ModelLoad(0, 0.0)}
    d = route("auto", cat, cat.plan("pro"), EASY, SERVED, seen)
    assert d.model.id == "smollm2-135m-instruct"
    assert dict(d.load) == {"smollm2-135m-instruct": seen["smollm2"], "llama-3.1-8b-instruct": seen["ensemble"]}


def test_auto_skips_a_cheaper_model_whose_queue_misses_the_plans_target(cat: ModelCatalogue) -> None:
    busy = {"smollm2": ModelLoad(6, 900.0, 1500.0), "ensemble": ModelLoad(0, 5.0, 300.0)}
    quiet = route("auto", cat, cat.plan("pro"), EASY, SERVED, {})
    assert quiet.model.id == "smollm2-135m-instruct"  # the cheapest strong-enough model when idle
    d = route("auto", cat, cat.plan("pro"), EASY, SERVED, busy)  # pro's target: 2000 ms; smollm2: 6 x 600 ms
    assert d.model.id == "llama-3.1-8b-instruct"
    assert "over plan pro's 2000 ms target: smollm2-135m-instruct (3600 ms)" in d.reason


def test_when_every_model_misses_the_target_auto_takes_the_least_loaded(cat: ModelCatalogue) -> None:
    both = {"smollm2": ModelLoad(6, 900.0, 1500.0), "ensemble": ModelLoad(9, 2500.0, 3000.0)}
    d = route("auto", cat, cat.plan("pro"), EASY, SERVED, both)
    assert d.model.id == "smollm2-135m-instruct" and "least loaded" in d.reason


def test_a_plan_without_a_target_ignores_load_and_an_explicit_model_is_kept(cat: ModelCatalogue) -> None:
    busy = {"smollm2": ModelLoad(50, 9000.0, 10000.0)}
    assert cat.plan("free").latency_target_ms == 0
    assert route("auto", cat, cat.plan("free"), HARD, SERVED, busy).model.id == "smollm2-135m-instruct"
    d = route("smollm2-135m-instruct", cat, cat.plan("enterprise"), EASY, SERVED, busy)
    assert d.model.id == "smollm2-135m-instruct" and dict(d.load) == {"smollm2-135m-instruct": busy["smollm2"]}


def test_a_grounded_question_steps_down_one_model_when_the_strong_one_is_queued(cat: ModelCatalogue) -> None:
    grounded = Features(prompt_tokens=600, max_output_tokens=64, turns=1, text="When was it built?", sources=4)
    cpu = {"smollm2", "qwen25_coder", "qwen25_coder_1p5b"}
    queued = {"qwen25_coder_1p5b": ModelLoad(2, 5000.0, 6000.0), "qwen25_coder": ModelLoad(0, 0.0),
              "smollm2": ModelLoad(0, 0.0)}
    assert route("auto", cat, cat.plan("pro"), grounded, cpu, {}).model.id == "qwen2.5-coder-1.5b-instruct"
    d = route("auto", cat, cat.plan("pro"), grounded, cpu, queued)  # the 1.5B: requests wait 5 s in its queue
    assert d.model.id == "qwen2.5-coder-0.5b-instruct" and "one step down" in d.reason
    assert "qwen2.5-coder-1.5b-instruct (5000 ms)" in d.reason
    # Never two steps down: with the 0.5B queued too, the least loaded strong model keeps it.
    both = {**queued, "qwen25_coder": ModelLoad(4, 3000.0, 3000.0)}
    d = route("auto", cat, cat.plan("pro"), grounded, cpu, both)
    assert d.model.id == "qwen2.5-coder-1.5b-instruct" and "least loaded" in d.reason


async def test_the_worker_routes_without_a_sample_older_than_the_stale_limit() -> None:
    """After a quiet spell the last sample still shows the burst before it: it must not steer routing."""
    import httpx

    from streams.routing_stage import TritonLoad

    sampler = TritonLoad("http://triton/metrics", ttl_s=3600.0, stale_s=60.0)  # one scrape in this test
    sampler._http = httpx.AsyncClient(transport=httpx.MockTransport(
        lambda _: httpx.Response(200, text=_text(8, 1_000_000, 9_000_000, 4))))
    assert await sampler.get() == {}  # nothing sampled yet: routing without load
    assert sampler._refreshing is not None
    await sampler._refreshing
    assert (await sampler.get())["smollm2"].pending == 4
    sampler._sampled_at -= 61  # a minute without a sample
    assert await sampler.get() == {}
    await sampler.close()
