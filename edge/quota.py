"""The spend gate every endpoint that spends passes before any work: a tenant or key whose budget is spent
is refused as OpenAI refuses an exhausted quota (429, `insufficient_quota`), saying what is left and when it
renews. The worst-case reservation itself happens where the cost is known (streams/routing_stage.py for
chat, edge/embeddings.py for embeddings)."""

from __future__ import annotations

from conflux.budget import Budgets, Limit, Standing, limits_for
from conflux.tenants import Tenant
from edge.errors import ApiError


def quota_error(message: str, standing: Standing | None = None) -> ApiError:
    return ApiError(429, message, "insufficient_quota", code="insufficient_quota",
                    headers=standing.headers() if standing else None)


async def spend_gate(budgets: Budgets, tenant: Tenant) -> tuple[list[Limit], Standing | None]:
    """The spend counters of this request (with the budgets that apply) and the tightest budget's standing
    (None when none is set: no Redis call then); ApiError(429) when one is spent."""
    limits = limits_for(tenant.spend_scopes)
    standing = await budgets.standing(limits)
    if standing is not None and standing.spent:
        raise quota_error(f"You exceeded your current quota: {standing.describe()}", standing)
    return limits, standing
