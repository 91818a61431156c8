"""The NumPy MiniLM encoder against similarities measured with the reference sentence-transformers model."""

from __future__ import annotations

import numpy as np
import pytest

from model_runtime.minilm import EmbeddingModelError, MiniLMEncoder


@pytest.fixture(scope="module")
def encoder() -> MiniLMEncoder:
    return MiniLMEncoder()


@pytest.mark.parametrize(
    ("a", "b", "reference"),
    [
        # Measured with sentence-transformers + torch on this machine kind (shared/research).
        ("Triton serves models on CPU.", "An inference server hosts models.", 0.248),
        ("How do I cache results in Redis?", "Storing computed values in a Redis cache", 0.721),
    ],
)
def test_matches_reference_similarities(encoder: MiniLMEncoder, a: str, b: str, reference: float) -> None:
    e = encoder.encode([a, b])
    assert float(e[0] @ e[1]) == pytest.approx(reference, abs=0.002)


def test_vectors_are_unit_length_and_related_beats_unrelated(encoder: MiniLMEncoder) -> None:
    e = encoder.encode(["Kafka stores the events.", "Events are kept in Kafka.", "I like green apples."])
    assert e.shape == (3, 384) and e.dtype == np.float32
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert e[0] @ e[1] > 0.6 > e[0] @ e[2]


def test_padding_in_a_batch_does_not_change_a_vector(encoder: MiniLMEncoder) -> None:
    short, long = "short text", "a considerably longer sentence that forces padding of the short one"
    together = encoder.encode([short, long])
    alone = encoder.encode([short])
    assert np.allclose(together[0], alone[0], atol=1e-5)


def test_long_input_is_truncated_not_rejected(encoder: MiniLMEncoder) -> None:
    assert encoder.count_tokens("word " * 2000) == encoder.max_seq_length
    assert encoder.encode(["word " * 2000]).shape == (1, 384)
    assert encoder.encode([]).shape == (0, 384)


def test_missing_model_is_a_typed_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(EmbeddingModelError):
        MiniLMEncoder(tmp_path)
