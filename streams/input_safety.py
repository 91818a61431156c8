"""Input safety: rules (personal data, attack markup, hidden encodings) plus the safety classifier over the
request's embedding (conflux/safety_model.py), judged by the tenant's policy over the taxonomy
(infra/safety_taxonomy.toml). Runs beside retrieval and prompt building; a blocked prompt gets a refusal."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from conflux.safety import check_rules, decode_hidden
from conflux.safety_model import MAX_HIDDEN, judge, slices
from streams.deps import Deps
from streams.once import expiry_s
from streams.request import RequestContext

REFUSAL = "I can't help with that request."


def expired(deps: Deps, request: dict[str, Any]) -> bool:
    """Older than any edge waits for: after an outage or on a new consumer group, nobody awaits the answer."""
    sent = request["envelope"]["event_time"]
    age = (datetime.now(UTC) - sent).total_seconds() if isinstance(sent, datetime) else 0.0
    return age > expiry_s(deps.inference_timeout_s)


async def check(deps: Deps, rc: RequestContext) -> str:
    """The request's input verdict (ALLOW, FLAG or BLOCK), recorded on safety.verdicts. The caller refuses a
    BLOCK before any token of the answer can leave."""
    t0 = time.perf_counter()
    text = "\n".join(m["content"] for m in rc.request["messages"] if m["role"] == "user")
    rules = check_rules(text)
    # The classifier looks at the newest user message (earlier turns were checked when they were sent); its
    # embedding is the retrieval query too, so the request is embedded once.
    head = deps.safety
    model = head.judge(await rc.embedding(deps.triton))
    if parts := slices(rc.newest_user_message):  # a long message: its tail and slices between, judged too
        model = max([model, *head.judge_many(await deps.triton.embed(parts))], key=lambda j: j.p_unsafe)
    hidden_texts = decode_hidden(rc.newest_user_message)[:MAX_HIDDEN]
    hidden = head.judge_many(await deps.triton.embed(hidden_texts)) if hidden_texts else []
    verdict, categories, reasons = judge(rc.policy, list(rules.categories), list(rules.reasons), model, hidden)
    await rc.events.add("safety.verdicts", {
        "envelope": deps.envelope(rc.env), "stage": "INPUT", "verdict": verdict, "categories": categories,
        "reasons": reasons, "score": model.p_unsafe, "checker": "rules+safety_head/minilm_embed",
        "latency_ms": (time.perf_counter() - t0) * 1000}, key=rc.key)
    return verdict
