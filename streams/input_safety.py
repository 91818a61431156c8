"""Input safety: rules (personal data, attack markup, hidden encodings) plus the safety classifier over the
request's embedding (conflux/safety_model.py), judged by the tenant's policy over the taxonomy
(infra/safety_taxonomy.toml). Runs beside retrieval and prompt building; a blocked prompt gets a refusal."""

from __future__ import annotations

import time
from typing import Any

from conflux.safety_model import assess
from streams.deps import Deps
from streams.once import expires_at
from streams.request import RequestContext

REFUSAL = "I can't help with that request."


def expired(deps: Deps, request: dict[str, Any]) -> bool:
    """Older than any edge waits for: after an outage or on a new consumer group, nobody awaits the answer."""
    return time.time() > expires_at(request, deps.inference_timeout_s)


async def check(deps: Deps, rc: RequestContext) -> str:
    """The request's input verdict (ALLOW, FLAG or BLOCK), recorded on safety.verdicts. The caller refuses a
    BLOCK before any token of the answer can leave."""
    t0 = time.perf_counter()
    # Rules read every user turn (a hit can span turns); the classifier reads the newest user message (earlier
    # turns were checked when they were sent), starting from the request's shared embedding, which is the
    # retrieval query too, so the request is embedded once; and not at all when the prefilter clears the message
    # and the tenant has no documents to search.
    rule_text = "\n".join(m["content"] for m in rc.request["messages"] if m["role"] == "user")
    a = await assess(deps.triton, deps.safety, rc.policy, rc.newest_user_message, rule_text=rule_text,
                     head_vector=lambda: rc.embedding(deps.triton),
                     prefilter=deps.prefilter.prompt if deps.prefilter is not None else None)
    checker = "rules+safety_head/minilm_embed" if a.embedded else "rules+safety_prefilter"
    await rc.events.add("safety.verdicts", {
        "envelope": deps.envelope(rc.env), "stage": "INPUT", "verdict": a.verdict, "categories": a.categories,
        "reasons": a.reasons, "score": a.model.p_unsafe, "checker": checker,
        "latency_ms": (time.perf_counter() - t0) * 1000}, key=rc.key)
    return a.verdict
