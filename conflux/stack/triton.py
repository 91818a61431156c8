"""Triton Inference Server 2.51 from the nvidia-pytriton wheel, serving triton_models/repository (Python backend).

The wheel bundles tritonserver, libtritonserver and a Python-backend stub per interpreter version. Two
gotchas measured on this machine kind (DESIGN.md): LD_LIBRARY_PATH must hold the interpreter's own LIBDIR
or the stub loads Debian's libpython; and the venv's python3 must come first on PATH so model.py sees
the venv's packages.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path

from conflux.errors import ServiceError
from conflux.stack.base import Health, LaunchSpec, Progress, Service, http_probe


def _site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


class TritonService(Service):
    name = "triton"
    start_timeout_s = 180.0
    stop_timeout_s = 30.0

    @property
    def dist(self) -> Path:
        return self.settings.home / "triton" / "dist"

    def endpoint(self) -> str:
        s = self.settings
        return f"grpc://127.0.0.1:{s.triton_grpc_port} http://127.0.0.1:{s.triton_http_port}"

    def install(self, progress: Progress) -> None:
        src = _site_packages() / "pytriton" / "tritonserver"
        if not (src / "bin" / "tritonserver").exists():
            raise ServiceError(f"tritonserver not found under {src}; is nvidia-pytriton installed in this venv?")
        stub = src / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / \
            "triton_python_backend_stub"
        if (self.dist / "backends" / "python" / "triton_python_backend_stub").exists():
            return
        progress("preparing Triton from the nvidia-pytriton wheel")
        if self.dist.exists():
            shutil.rmtree(self.dist)
        for part in ("bin", "backends", "caches"):
            shutil.copytree(src / part, self.dist / part, symlinks=True)
        shutil.copy2(stub, self.dist / "backends" / "python" / "triton_python_backend_stub")

    def launch(self) -> LaunchSpec:
        s = self.settings
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        env = {
            "LD_LIBRARY_PATH": ":".join(
                p for p in (str(_site_packages() / "nvidia_pytriton.libs"), libdir,
                            os.environ.get("LD_LIBRARY_PATH", "")) if p),
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
            "HF_HUB_OFFLINE": "1",
            # One BLAS thread per model instance: with two, contention on 2 cores made inference 4-25x slower.
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            # What the NVIDIA image sets too (infra/triton/Dockerfile): the models import model_runtime from here.
            "PYTHONPATH": str(s.repo_root / "triton_models" / "runtime"),
        }
        return LaunchSpec([
            str(self.dist / "bin" / "tritonserver"),
            f"--model-repository={s.repo_root / 'triton_models' / 'repository'}",
            f"--backend-directory={self.dist / 'backends'}",
            f"--cache-directory={self.dist / 'caches'}",
            "--http-address=127.0.0.1", f"--http-port={s.triton_http_port}",
            "--grpc-address=127.0.0.1", f"--grpc-port={s.triton_grpc_port}",
            "--metrics-address=127.0.0.1", f"--metrics-port={s.triton_metrics_port}",
            "--allow-metrics=true", "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0", "--cuda-memory-pool-byte-size=0:0",
            "--exit-on-error=true", "--log-info=true",
            # Every model at start, and load/unload through the repository API (an operator taking one model
            # down, and the fallback tests, without restarting the server).
            "--model-control-mode=explicit", "--load-model=*",
        ], env=env, cwd=s.home, supervised=True)  # 2.51 can crash when a client drops its streams: supervise.py

    def health(self) -> Health:
        return http_probe(f"{self.settings.triton_http_url}/v2/health/ready")
