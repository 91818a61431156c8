"""The soak's memory verdict: means over the first and last samples, not one noisy sample at each end."""

from __future__ import annotations

from producers.soak import growth


def test_growth_compares_means_of_the_first_and_last_samples() -> None:
    swings = [100.0, 130.0] * 10  # a service that swings with merges or GC but does not grow
    climbs = [100.0 + i for i in range(20)]  # one that grows 1 MB per sample
    samples = [{"ch": a, "edge": b, "gone": None} for a, b in zip(swings, climbs, strict=True)]
    out = growth(samples, 6)
    assert out["ch"]["growth_pct"] == 0.0 and out["ch"]["first"] == 100.0 and out["ch"]["last"] == 130.0
    assert out["edge"]["growth_pct"] == round((116.5 / 102.5 - 1) * 100, 1)
    assert "gone" not in out  # a service that was not running has no verdict
    assert growth(samples[:5], 6) == {}  # too few samples: no verdict (and the soak reports memory_ok false)
