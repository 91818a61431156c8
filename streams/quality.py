"""Quality: scores each delivered answer against the sources it was given (conflux/grounding.py) and records
them on quality.scores. Runs after the answer's final chunk has left, so it adds nothing to the caller's wait;
its event is acknowledged with the request's others, before the input offset can be committed."""

from __future__ import annotations

import time

from conflux import grounding
from streams.deps import Deps
from streams.inference import Generated
from streams.prompt_build import Built
from streams.request import RequestContext

SCORER = "lexical-v1"


async def record(deps: Deps, rc: RequestContext, built: Built, gen: Generated, finish_reason: str) -> None:
    t0 = time.perf_counter()
    s = grounding.score(gen.text, built.sources)
    deps.metrics.inc("answers_scored_total", help_text="answers scored by the quality stage",
                     hallucinated=str(s.hallucinated).lower())
    await rc.events.add("quality.scores", {
        "envelope": deps.envelope(rc.env), "model": gen.model.id, "sources": len(built.sources),
        "cited": [built.sources[i]["chunk_id"] for i in s.cited], "grounded": s.grounded,
        "hallucinated": s.hallucinated, "refusal": s.refusal, "empty": s.empty,
        "repetition": round(s.repetition, 4), "finish_reason": finish_reason, "scorer": SCORER,
        "latency_ms": (time.perf_counter() - t0) * 1000}, key=rc.key)
