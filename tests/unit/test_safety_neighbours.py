"""The nearest-neighbour vote the safety classifier adds to its log-odds (conflux/safety_neighbours.py): how it
votes, that the committed neighbours are those `make safety-model` wrote from the committed inputs, and that the
classifier refuses neighbours it was not calibrated with."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from conflux.safety_model import HEAD_PATH, SafetyHead, SafetyModelError
from conflux.safety_neighbours import NEIGHBOURS_PATH, Neighbours, NeighboursError, quantize


def _unit(rng: np.random.Generator, n: int, dim: int = 8) -> Any:
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_a_prompt_among_unsafe_neighbours_votes_unsafe_and_among_safe_ones_safe() -> None:
    rng = np.random.default_rng(0)
    unsafe_centre, safe_centre = _unit(rng, 2)
    near_unsafe = unsafe_centre + 0.05 * _unit(rng, 6)
    near_safe = safe_centre + 0.05 * _unit(rng, 6)
    vectors = np.vstack([near_unsafe, near_safe])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    nb = Neighbours.of(vectors, np.array([True] * 6 + [False] * 6), k=5, temperature=0.05)
    votes = nb.logits(np.stack([unsafe_centre, safe_centre]))
    assert votes[0] > 3 and votes[1] < -3  # clipped at +-log(0.98 / 0.02)
    assert abs(votes[0]) <= np.log(0.98 / 0.02) + 1e-5


def test_the_vote_is_class_balanced() -> None:
    """Five neighbours, one unsafe, all as similar: with one unsafe row in five overall, that is an even vote."""
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    vectors = np.tile(q, (5, 1))
    nb = Neighbours.of(vectors, np.array([True, False, False, False, False]), k=5, temperature=0.05)
    assert abs(float(nb.logits(q)[0])) < 1e-5


def test_k_larger_than_the_neighbours_and_a_batch_of_queries() -> None:
    rng = np.random.default_rng(1)
    nb = Neighbours.of(_unit(rng, 3), np.array([True, False, True]), k=20, temperature=0.1)
    assert nb.logits(_unit(rng, 4)).shape == (4,)


def test_int8_round_trip_and_a_saved_file_loads_with_the_same_digest(tmp_path: Any) -> None:
    rng = np.random.default_rng(2)
    vectors = _unit(rng, 50, 384)
    values, scales = quantize(vectors)
    assert np.abs(values.astype(np.float32) * scales - vectors).max() < 0.5 * float(scales.max()) + 1e-7
    nb = Neighbours.of(vectors, rng.random(50) < 0.3, k=5, temperature=0.05)
    path = tmp_path / "n.npz"
    nb.save(path, {"rows": 50})
    back = Neighbours.load(path)
    assert back.digest() == nb.digest() and Neighbours.manifest(path) == {"rows": 50}
    assert np.allclose(back.logits(vectors[:3]), nb.logits(vectors[:3]))


def test_a_malformed_file_is_a_clear_error(tmp_path: Any) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, values=np.zeros((3, 4), dtype=np.int8), scales=np.ones((2, 1), dtype=np.float32),
             unsafe=np.zeros(3, dtype=bool), k=np.int64(5), temperature=np.float32(0.05))
    with pytest.raises(NeighboursError, match="malformed"):
        Neighbours.load(bad)
    with pytest.raises(NeighboursError, match="make safety-model"):
        Neighbours.load(tmp_path / "missing.npz")


def test_the_committed_neighbours_are_the_train_split_the_head_was_trained_and_calibrated_with() -> None:
    head_manifest = json.loads(HEAD_PATH.read_text())["manifest"]
    manifest = Neighbours.manifest()
    assert manifest["train_sha256"] == head_manifest["train"]["sha256"], "rerun `make safety-model` and commit"
    assert manifest["trainer_sha256"] == head_manifest["trainer_sha256"]
    nb = Neighbours.load()
    assert len(nb.vectors) == manifest["rows"] == head_manifest["train"]["rows"]
    assert nb.digest() == head_manifest["neighbours_sha256"]
    # Unit-length embeddings, up to the int8 rounding.
    assert np.allclose(np.linalg.norm(nb.vectors, axis=1), 1.0, atol=0.02)
    assert 0.01 < nb.unsafe.mean() < 0.5


def test_the_classifier_adds_the_vote_it_was_calibrated_with() -> None:
    head = SafetyHead.load()
    assert head.neighbours is not None and head.knn_weight > 0
    nb = head.neighbours
    unsafe_row, safe_row = nb.vectors[np.flatnonzero(nb.unsafe)[0]], nb.vectors[np.flatnonzero(~nb.unsafe)[0]]
    text = "the same words for both"
    a, b = head.judge_many(np.stack([unsafe_row, safe_row]), [text, text])
    logodds = [np.log(j.p_unsafe / (1 - j.p_unsafe)) for j in (a, b)]
    linear = [float(v @ head._w + head._b) for v in (unsafe_row, safe_row)]
    want = (linear[0] - linear[1]) + head.knn_weight * float(nb.logits(unsafe_row)[0] - nb.logits(safe_row)[0])
    assert abs((logodds[0] - logodds[1]) - want) < 1e-3


def test_a_classifier_refuses_neighbours_it_was_not_calibrated_with(tmp_path: Any) -> None:
    with np.load(NEIGHBOURS_PATH) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["unsafe"] = ~arrays["unsafe"]
    other = tmp_path / "neighbours.npz"
    np.savez(other, **arrays)
    with pytest.raises(SafetyModelError, match="not the neighbours"):
        SafetyHead.load(neighbours_path=other)
