"""Stage 4, routing: pick the model variant (conflux/routing.py) and record why."""

from __future__ import annotations

from typing import Any

from conflux.routing import Features, RoutingError, route
from streams.deps import Deps

SOURCE = "prompt.built"
EVENT = "prompt_built"


async def served_models(deps: Deps) -> set[str]:
    """Triton models that are READY right now (cached for a few seconds in Redis by whoever asks first)."""
    cached = await deps.redis.smembers("conflux:triton:ready")
    if cached:
        return {c.decode() for c in cached}
    index = await deps.triton.repository_index()
    ready = {m["name"] for m in index.get("models", []) if m.get("state") == "READY"}
    if ready:
        await deps.redis.sadd("conflux:triton:ready", *ready)
        await deps.redis.expire("conflux:triton:ready", 5)
    return ready


async def handle(deps: Deps, built: dict[str, Any]) -> None:
    env = built["envelope"]
    ctx = await deps.ctx.get(env["request_id"], "request", "plan")
    request = ctx["request"]
    plan = deps.models.plan(ctx.get("plan", "free"))
    last_user = next((m["content"] for m in reversed(request["messages"]) if m["role"] == "user"), "")
    features = Features(prompt_tokens=built["prompt_tokens"], max_output_tokens=int(request["max_tokens"] or 256),
                        turns=len(built["messages"]), text=last_user)
    try:
        decision = route(request["model"], deps.models, plan, features, await served_models(deps))
    except RoutingError as exc:
        await deps.publisher.publish("routing.decisions", {
            "envelope": deps.envelope(env), "requested_model": request["model"], "chosen_model": "",
            "triton_model": "", "tier": plan.name, "reason": f"refused ({exc.code}): {exc}", "candidates": [],
            "estimated_cost_usd": 0.0}, key=env["conversation_id"])
        await deps.finish_with_error(request, str(exc), finish_reason=exc.code)
        return
    await deps.ctx.put(env["request_id"], model=decision.model.id)
    await deps.publisher.publish("routing.decisions", {
        "envelope": deps.envelope(env), "requested_model": request["model"], "chosen_model": decision.model.id,
        "triton_model": decision.model.triton_stream, "tier": plan.name, "reason": decision.reason,
        "candidates": list(decision.candidates), "estimated_cost_usd": decision.estimated_cost_usd},
        key=env["conversation_id"])
