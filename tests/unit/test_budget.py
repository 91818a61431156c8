"""Budget arithmetic: integer micro-dollars, windows and renewals, settings (Redis side: integration)."""

from __future__ import annotations

import datetime as dt

import pytest

from conflux.budget import Budget, BudgetError, Limit, Standing, cost_micros, limits_for, price_picos, renews_at
from conflux.models import load_models


def test_prices_become_integer_picos_per_token_exactly() -> None:
    assert price_picos(0.00005) == 50_000
    assert price_picos(0.0001) == 100_000
    assert price_picos(0.002) == 2_000_000
    assert price_picos(0.0) == 0


def test_cost_is_rounded_up_to_a_whole_micro_dollar() -> None:
    # 10 prompt tokens at 50,000 p$ + 3 at 100,000 p$ = 800,000 p$ = 0.8 µ$ -> 1 µ$
    assert cost_micros(10, 3, 50_000, 100_000) == 1
    assert cost_micros(20, 0, 1_000_000, 0) == 20
    assert cost_micros(0, 0, 1_000_000, 2_000_000) == 0
    # A sum of many costs is exact: no float ever enters the accounting.
    assert sum(cost_micros(p, c, 1_000_000, 2_000_000) for p, c in [(7, 3)] * 1000) == 13_000


def test_catalogue_models_cost_in_micros() -> None:
    paced = load_models().get("echo-paced")
    assert paced.cost_micros(20, 16) == 20 + 32
    assert load_models().get("echo").cost_micros(1000, 1000) == 0


def test_windows_and_renewals_are_utc_days_and_months() -> None:
    at = dt.datetime(2026, 12, 31, 23, 59, tzinfo=dt.UTC)
    t_day, t_month, k_day, k_month = limits_for([("tenant:t1", Budget("day", 5)),
                                                 ("key:t1:key_0123456789ab", Budget("month", None, 9))], at)
    assert (t_day.usd_micros, t_month.usd_micros, k_day.tokens, k_month.tokens) == (5, None, None, 9)
    assert not t_month.limited and t_day.limited
    day, month = t_day, k_month
    assert (day.window, month.window) == ("d20261231", "m202612")
    # Counted even without a budget: the counters hold the whole spend of the day and the month.
    assert [x.window for x in limits_for([("tenant:t2", None)], at)] == ["d20261231", "m202612"]
    assert renews_at(day.window) == dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    assert renews_at(month.window) == dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    assert renews_at("m202602") == dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    assert Limit.of(day.record()) == day


@pytest.mark.parametrize("args", [("week", 5, None), ("day", None, None), ("month", -1, None), ("day", None, -3)])
def test_a_budget_that_cannot_be_enforced_is_refused(args: tuple[str, int | None, int | None]) -> None:
    with pytest.raises(BudgetError):
        Budget(*args)


def test_a_budget_survives_its_stored_form() -> None:
    b = Budget("day", 1_500_000, 20_000)
    assert Budget.from_json(b.to_json()) == b
    assert Budget.from_json(None) is None


def test_a_scope_not_of_the_known_shapes_is_refused() -> None:
    with pytest.raises(BudgetError):
        limits_for([("tenant:A B", Budget("day", 1))])


def test_standing_says_what_is_left_and_when_it_renews() -> None:
    s = Standing("tenant:acme", 0, 120, dt.datetime(2026, 12, 2, tzinfo=dt.UTC))
    assert s.spent
    assert "$0.000000 and 120 tokens left" in s.describe() and "2026-12-02T00:00:00Z" in s.describe()
    assert s.headers()["x-budget-remaining-tokens"] == "120"
    assert not Standing("tenant:acme", 5, None, dt.datetime(2026, 12, 2, tzinfo=dt.UTC)).spent
