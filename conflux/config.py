"""Settings for every Conflux process, read from CONFLUX_* environment variables.

Defaults describe the local stack on 127.0.0.1; pointing the same code at clusters is a matter of
setting the variables (see README "Configuration"). State is built once and passed in, never global.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from conflux.errors import ConfigError
from conflux.kafka_access import KafkaAccess

# Where schemas/, infra/ and triton_models/ live: the checkout, or CONFLUX_ROOT in an installed image.
# The semantic cache's similarity threshold, tuned by `make semantic-eval` on the tune split of external
# paraphrase pairs for precision (a wrong cached answer is worse than a miss).
SEMANTIC_THRESHOLD = 0.845
REPO_ROOT = Path(os.environ.get("CONFLUX_ROOT") or Path(__file__).resolve().parent.parent)


def _int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc


def _fraction(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number from 0 to 1, got {raw!r}") from exc
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be a number from 0 to 1, got {raw!r}")
    return value


@dataclass(frozen=True)
class Settings:
    """Where everything lives. Ports are the local defaults; URLs win when set."""

    home: Path = field(default_factory=lambda: REPO_ROOT / ".conflux")
    repo_root: Path = REPO_ROOT
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_heap: str = "512m"
    # Clusters: SASL/SCRAM over TLS, one principal per service (conflux/kafka_access.py, infra/kafka/acls.toml).
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = "SCRAM-SHA-512"
    kafka_username: str = ""
    kafka_password: str = field(default="", repr=False)
    kafka_ssl_cafile: str = ""
    redis_port: int = 6379
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_password: str = field(default="", repr=False)  # clusters: Redis AUTH (the local stack has none)
    triton_host: str = "127.0.0.1"
    triton_http_port: int = 8000
    triton_grpc_port: int = 8001
    triton_metrics_port: int = 8002
    clickhouse_port: int = 8123
    # "http(s)://host:port" for a real server (or the local chdb-backed one); "chdb:///abs/path" in-process.
    clickhouse_url: str = "http://127.0.0.1:8123"
    clickhouse_user: str = ""  # empty: the server's default user
    clickhouse_password: str = field(default="", repr=False)
    weaviate_port: int = 8090
    weaviate_grpc_port: int = 50051
    # Empty selects the embedded LanceDB backend; a URL selects Weaviate.
    weaviate_url: str = "http://127.0.0.1:8090"
    weaviate_api_key: str = field(default="", repr=False)  # clusters: Weaviate's API-key authentication
    weaviate_version: str = "v1.35.2"
    vector_backend: str = "auto"  # auto | weaviate | lancedb
    kafka_version: str = "3.9.1"
    edge_port: int = 8080
    worker_metrics_port: int = 9101
    sink_metrics_port: int = 9102
    metrics_host: str = "127.0.0.1"  # 0.0.0.0 in containers, where Prometheus scrapes from another host
    # Seconds a generation may take, and an edge may wait for the chain, before the caller gets an error.
    inference_timeout_s: float = 60.0
    # How long a model that has a fallback may stay silent before its first token (then the fallback answers).
    first_token_timeout_s: float = 15.0
    # Parallel rails (streams/pipeline.py): whether the model may start generating before the input verdict (its
    # output held until the verdict allows). Off by default: a block then cancels a model stream mid-answer, and
    # Triton 2.51 (the local stack's) can crash on a stream cancelled as its last response goes out (README).
    generate_before_verdict: bool = False
    cache_ttl_s: int = 3600  # the exact response cache's default TTL (a tenant may set its own, or 0: off)
    # The semantic cache's default similarity threshold (edge/semantic_cache.py; a tenant may set its own; 0: off).
    semantic_threshold: float = SEMANTIC_THRESHOLD
    # Seconds the edge waits for the broker to acknowledge an event before answering 503 (broker down).
    publish_timeout_s: float = 5.0
    # Load shedding at the edge (edge/load.py): 503 + Retry-After once this instance's open requests, or the
    # chain's backlog on chat.requests, passes the bound times the tenant plan's load_share.
    edge_max_open: int = 256
    max_request_lag: int = 2000  # Faust commits every few seconds, so a busy healthy chain shows hundreds
    # Signs response ids so an edge can tell which tenant owns one without a lookup (conflux/ids.py). Every
    # edge of a deployment must share it; empty = the local stack's .conflux/id-secret.
    id_secret: str = field(default="", repr=False)
    # Whether `conflux up` also runs Conflux's own edge and worker (off for engine-only test sessions).
    run_platform: bool = True

    @property
    def kafka(self) -> KafkaAccess:
        """What every Kafka client of this process connects with."""
        return KafkaAccess(self.kafka_bootstrap, self.kafka_security_protocol, self.kafka_sasl_mechanism,
                           self.kafka_username, self.kafka_password, self.kafka_ssl_cafile)

    @property
    def triton_grpc_url(self) -> str:
        return f"{self.triton_host}:{self.triton_grpc_port}"

    @property
    def triton_http_url(self) -> str:
        return f"http://{self.triton_host}:{self.triton_http_port}"

    @property
    def triton_metrics_url(self) -> str:
        return f"http://{self.triton_host}:{self.triton_metrics_port}/metrics"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def lancedb_path(self) -> Path:
        return self.home / "lancedb"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        e = dict(os.environ if env is None else env)
        home = Path(e.get("CONFLUX_HOME", str(REPO_ROOT / ".conflux"))).resolve()
        kafka_port = _int(e, "CONFLUX_KAFKA_PORT", 9092)
        redis_port = _int(e, "CONFLUX_REDIS_PORT", 6379)
        ch_port = _int(e, "CONFLUX_CLICKHOUSE_PORT", 8123)
        wv_port = _int(e, "CONFLUX_WEAVIATE_PORT", 8090)
        backend = e.get("CONFLUX_VECTOR_BACKEND", "auto")
        if backend not in ("auto", "weaviate", "lancedb"):
            raise ConfigError(f"CONFLUX_VECTOR_BACKEND must be auto, weaviate or lancedb, got {backend!r}")
        settings = cls(
            home=home,
            kafka_port=kafka_port,
            kafka_controller_port=_int(e, "CONFLUX_KAFKA_CONTROLLER_PORT", kafka_port + 1),
            kafka_bootstrap=e.get("CONFLUX_KAFKA_BOOTSTRAP", f"127.0.0.1:{kafka_port}"),
            kafka_heap=e.get("CONFLUX_KAFKA_HEAP", "512m"),
            kafka_security_protocol=e.get("CONFLUX_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"),
            kafka_sasl_mechanism=e.get("CONFLUX_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
            kafka_username=e.get("CONFLUX_KAFKA_USERNAME", ""),
            kafka_password=e.get("CONFLUX_KAFKA_PASSWORD", ""),
            kafka_ssl_cafile=e.get("CONFLUX_KAFKA_SSL_CAFILE", ""),
            redis_port=redis_port,
            redis_url=e.get("CONFLUX_REDIS_URL", f"redis://127.0.0.1:{redis_port}/0"),
            redis_password=e.get("CONFLUX_REDIS_PASSWORD", ""),
            triton_host=e.get("CONFLUX_TRITON_HOST", "127.0.0.1"),
            triton_http_port=_int(e, "CONFLUX_TRITON_HTTP_PORT", 8000),
            triton_grpc_port=_int(e, "CONFLUX_TRITON_GRPC_PORT", 8001),
            triton_metrics_port=_int(e, "CONFLUX_TRITON_METRICS_PORT", 8002),
            clickhouse_port=ch_port,
            clickhouse_url=e.get("CONFLUX_CLICKHOUSE_URL", f"http://127.0.0.1:{ch_port}"),
            clickhouse_user=e.get("CONFLUX_CLICKHOUSE_USER", ""),
            clickhouse_password=e.get("CONFLUX_CLICKHOUSE_PASSWORD", ""),
            weaviate_port=wv_port,
            weaviate_grpc_port=_int(e, "CONFLUX_WEAVIATE_GRPC_PORT", 50051),
            weaviate_url=e.get("CONFLUX_WEAVIATE_URL", f"http://127.0.0.1:{wv_port}"),
            weaviate_api_key=e.get("CONFLUX_WEAVIATE_API_KEY", ""),
            weaviate_version=e.get("CONFLUX_WEAVIATE_VERSION", "v1.35.2"),
            vector_backend=backend,
            kafka_version=e.get("CONFLUX_KAFKA_VERSION", "3.9.1"),
            edge_port=_int(e, "CONFLUX_EDGE_PORT", 8080),
            worker_metrics_port=_int(e, "CONFLUX_WORKER_METRICS_PORT", 9101),
            sink_metrics_port=_int(e, "CONFLUX_SINK_METRICS_PORT", 9102),
            metrics_host=e.get("CONFLUX_METRICS_HOST", "127.0.0.1"),
            inference_timeout_s=float(_int(e, "CONFLUX_INFERENCE_TIMEOUT_S", 60)),
            first_token_timeout_s=float(_int(e, "CONFLUX_FIRST_TOKEN_TIMEOUT_S", 15)),
            generate_before_verdict=e.get("CONFLUX_GENERATE_BEFORE_VERDICT", "0") in ("1", "true", "yes"),
            cache_ttl_s=_int(e, "CONFLUX_CACHE_TTL_S", 3600),
            semantic_threshold=_fraction(e, "CONFLUX_SEMANTIC_THRESHOLD", SEMANTIC_THRESHOLD),
            publish_timeout_s=float(_int(e, "CONFLUX_PUBLISH_TIMEOUT_S", 5)),
            edge_max_open=_int(e, "CONFLUX_EDGE_MAX_OPEN", 256),
            max_request_lag=_int(e, "CONFLUX_MAX_REQUEST_LAG", 2000),
            id_secret=e.get("CONFLUX_ID_SECRET", ""),
            run_platform=e.get("CONFLUX_RUN_PLATFORM", "1") not in ("0", "false", "no"),
        )
        _ = settings.kafka  # an incomplete Kafka security setting fails here, at start, in one line
        return settings
