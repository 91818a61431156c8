"""Load shedding at the edge (edge/load.py): refused at once, by plan, before any work is queued."""

from __future__ import annotations


def test_load_is_shed_by_plan_before_any_work() -> None:
    from conflux.models import Plan
    from edge.errors import ApiError
    from edge.load import LoadGauge

    free = Plan("free", 0, 60, 20000, 256, load_share=0.5)
    enterprise = Plan("enterprise", 2, 6000, 2_000_000, 2048, load_share=1.0)
    state = {"open": 0, "lag": 0}
    gauge = LoadGauge(lambda: state["open"], 10, lambda: state["lag"], 100)
    gauge.admit(free)
    state["open"] = 5  # half the edge's bound: free tenants are shed, enterprise ones still served
    try:
        gauge.admit(free)
        raise AssertionError("a free request was admitted at 50% load")
    except ApiError as exc:
        assert exc.status == 503 and exc.headers["Retry-After"] == "1" and exc.code == "overloaded"
    gauge.admit(enterprise)
    state["open"], state["lag"] = 0, 100  # the chain's backlog counts the same way
    try:
        gauge.admit(enterprise)
        raise AssertionError("admitted with the chain a full bound behind")
    except ApiError as exc:
        assert exc.status == 503
