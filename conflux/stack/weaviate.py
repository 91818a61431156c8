"""Weaviate, built from source with `go install` through the Go module proxy (no registry ships a binary).

v1.35.2's go.mod has no replace directives, so a plain `go install module/cmd/weaviate-server@version`
works. First build about 3 minutes on 2 cores; Go's module and build caches make later ones instant.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from conflux.errors import ServiceError
from conflux.stack.base import Health, LaunchSpec, Progress, Service, http_probe, run_step

MODULE = "github.com/weaviate/weaviate/cmd/weaviate-server"


class WeaviateService(Service):
    name = "weaviate"
    start_timeout_s = 90.0
    stop_timeout_s = 20.0

    @property
    def binary(self) -> Path:
        return self.settings.home / "weaviate" / self.settings.weaviate_version / "weaviate-server"

    def endpoint(self) -> str:
        return f"{self.settings.weaviate_url} (grpc 127.0.0.1:{self.settings.weaviate_grpc_port})"

    def install(self, progress: Progress) -> None:
        if self.binary.exists():
            return
        if shutil.which("go") is None:
            raise ServiceError("weaviate needs the Go toolchain to build (go install); none on PATH")
        run_step(
            ["go", "install", f"{MODULE}@{self.settings.weaviate_version}"],
            f"building Weaviate {self.settings.weaviate_version} with go install (first time: ~3 min)",
            progress, env={"GOBIN": str(self.binary.parent), "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false"},
            log=self.settings.logs_dir / "install.log",
        )
        if not self.binary.exists():
            raise ServiceError(f"go install finished but {self.binary} is missing")

    def launch(self) -> LaunchSpec:
        s = self.settings
        data = s.home / "weaviate" / "data"
        data.mkdir(parents=True, exist_ok=True)
        return LaunchSpec([
            str(self.binary), "--host", "127.0.0.1", "--port", str(s.weaviate_port), "--scheme", "http",
        ], env={
            "PERSISTENCE_DATA_PATH": str(data),
            "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED": "true",
            "DEFAULT_VECTORIZER_MODULE": "none",
            "ENABLE_MODULES": "",
            "CLUSTER_HOSTNAME": "conflux-node1",
            "CLUSTER_BIND_ADDR": "127.0.0.1",
            "CLUSTER_ADVERTISE_ADDR": "127.0.0.1",
            "CLUSTER_GOSSIP_BIND_PORT": "7946",
            "CLUSTER_DATA_BIND_PORT": "7947",
            "RAFT_BOOTSTRAP_EXPECT": "1",
            "GRPC_PORT": str(s.weaviate_grpc_port),
            "GO_PROFILING_DISABLE": "true",
            "DISABLE_TELEMETRY": "true",
            "QUERY_DEFAULTS_LIMIT": "25",
            "LIMIT_RESOURCES": "true",
        }, cwd=s.home / "weaviate")

    def health(self) -> Health:
        return http_probe(f"{self.settings.weaviate_url}/v1/.well-known/ready")
