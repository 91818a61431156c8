"""docker-compose.yml cannot run here (no Docker engine), so its shape is checked instead."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from conflux.cli import build_parser
from conflux.config import REPO_ROOT

ENGINES = {"kafka", "clickhouse", "redis", "weaviate", "triton", "prometheus"}
CONFLUX = {"conflux-init", "conflux-edge", "conflux-worker", "conflux-sink"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    assert isinstance(doc, dict)
    return doc


def test_every_required_service_is_there(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) >= ENGINES | CONFLUX


def test_engines_have_pinned_images_and_health_checks(compose: dict[str, Any]) -> None:
    for name in ENGINES:
        svc = compose["services"][name]
        image = svc["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image version"
        assert svc["healthcheck"]["test"], f"{name}: needs a health check"


def test_kafka_is_the_kraft_release_the_clients_support(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:3.9")
    assert kafka["command"] == ["/conflux/start-sasl.sh"]
    assert "./infra/kafka/start-sasl.sh:/conflux/start-sasl.sh:ro" in kafka["volumes"]
    script = (REPO_ROOT / "infra" / "kafka" / "start-sasl.sh").read_text()
    for line in ("process.roles=broker,controller", "auto.create.topics.enable=false",
                 "allow.everyone.if.no.acl.found=false", "listener.security.protocol.map=SASL_SSL:SASL_SSL,"):
        assert line in script


def _secret_refs(value: str) -> bool:
    return value.startswith("${") and ":?" in value


def test_every_secret_is_required_from_the_environment(compose: dict[str, Any]) -> None:
    """No default password anywhere: compose refuses to start without each one (as without CONFLUX_ID_SECRET)."""
    for name, svc in compose["services"].items():
        env = svc.get("environment") or {}
        for key, value in env.items():
            if any(word in key for word in ("PASSWORD", "SECRET", "API_KEY")):
                assert _secret_refs(str(value)), f"{name}: {key} must be ${{VAR:?...}}, not {value!r}"
    redis = compose["services"]["redis"]["command"]
    assert _secret_refs(redis[redis.index("--requirepass") + 1])
    weaviate = compose["services"]["weaviate"]["environment"]
    assert weaviate["AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED"] == "false"
    assert weaviate["AUTHENTICATION_APIKEY_ENABLED"] == "true"


def test_each_conflux_service_is_its_own_kafka_principal(compose: dict[str, Any]) -> None:
    from conflux.kafka_acls import load_grants

    granted = {b.principal.removeprefix("User:") for b in load_grants()}
    users = {}
    for name in CONFLUX | {"conflux-acls"}:
        env = compose["services"][name]["environment"]
        assert env["CONFLUX_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        users[name] = env["CONFLUX_KAFKA_USERNAME"]
    assert len(set(users.values())) == len(users), users
    assert set(users.values()) - {"admin"} <= granted
    script = (REPO_ROOT / "infra" / "kafka" / "start-sasl.sh").read_text()
    for user in users.values():
        assert f"name={user}," in script, f"start-sasl.sh does not create {user}"
    assert compose["services"]["conflux-init"]["depends_on"]["conflux-acls"]["condition"] == \
        "service_completed_successfully"


def test_the_default_profile_serves_the_cpu_models(compose: dict[str, Any]) -> None:
    """`docker compose up -d` on a machine without a GPU starts a Triton the workers can use."""
    triton = compose["services"]["triton"]
    assert "profiles" not in triton
    assert triton["build"]["dockerfile"] == "infra/triton/Dockerfile" and "args" not in triton["build"]
    assert "deploy" not in triton  # no GPU reservation
    for name in CONFLUX:
        assert compose["services"][name]["environment"]["CONFLUX_TRITON_HOST"] == "${CONFLUX_TRITON_HOST:-triton}"


def test_the_triton_image_holds_the_models_and_only_their_requirements() -> None:
    """The image is NVIDIA's plus triton_models/: the files the self-containment test builds its venv from
    (tests/unit/test_triton_models.py), the runtime on PYTHONPATH, the repository the local stack serves."""
    lines = [ln.strip() for ln in (REPO_ROOT / "infra" / "triton" / "Dockerfile").read_text().splitlines()]
    text = "\n".join(lines)
    assert "ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:" in text and "FROM ${TRITON_IMAGE}" in text
    assert "-r /opt/conflux/requirements.txt" in text
    assert "--no-deps -r /opt/conflux/requirements-no-deps.txt" in text
    assert "COPY triton_models/runtime /opt/conflux/runtime" in text
    assert "COPY triton_models/repository /models" in text
    assert "PYTHONPATH=/opt/conflux/runtime" in text
    copied = {ln.split()[1] for ln in lines if ln.startswith("COPY ")}
    assert not any(src.startswith(("conflux", "edge", "streams", ".")) for src in copied), copied
    local = (REPO_ROOT / "conflux" / "stack" / "triton.py").read_text()
    assert "'triton_models' / 'repository'" in local and '"triton_models" / "runtime"' in local


def test_the_gpu_profile_runs_tensorrt_llm_beside_the_cpu_models(compose: dict[str, Any]) -> None:
    triton = compose["services"]["triton-gpu"]
    assert triton["profiles"] == ["gpu"]
    assert "trtllm" in triton["build"]["args"]["TRITON_IMAGE"]
    assert triton["build"]["dockerfile"] == "infra/triton/Dockerfile"
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert {"--model-repository=/models", "--model-repository=/trtllm_repo"} <= set(triton["command"])


def test_triton_serves_the_prepared_tensorrt_llm_repository(compose: dict[str, Any]) -> None:
    prep, triton = compose["services"]["trtllm-prepare"], compose["services"]["triton-gpu"]
    assert "--model-repository=/trtllm_repo" in triton["command"]
    assert any(v.startswith("trtllm-repo:/trtllm_repo") for v in prep["volumes"])
    assert any(v.startswith("trtllm-repo:/trtllm_repo") for v in triton["volumes"])
    script = REPO_ROOT / "infra" / "trtllm" / "prepare_repository.sh"
    text = script.read_text()
    assert script.stat().st_mode & 0o111, "prepare_repository.sh must be executable"
    for model in ("preprocessing", "tensorrt_llm", "postprocessing", "ensemble"):
        assert model in text
    assert "decoupled_mode:True" in text and "inflight_fused_batching" in text


def test_dependencies_exist_and_wait_for_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            assert cond["condition"] in ("service_healthy", "service_completed_successfully")
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}, which has no health check"


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0]
            if not source.startswith(("./", "/", "${")):  # ${VAR:-./path} is a host path too
                assert source in declared, f"{name}: volume {source} not declared"


def test_conflux_services_share_one_config_by_url(compose: dict[str, Any]) -> None:
    for name in CONFLUX:
        env = compose["services"][name]["environment"]
        assert env["CONFLUX_KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert env["CONFLUX_CLICKHOUSE_URL"].startswith("http://clickhouse:")
        assert compose["services"][name]["command"][0] == "conflux"


@pytest.mark.parametrize(("service", "command"), [("conflux-init", "topics"), ("conflux-edge", "edge"),
                                                 ("conflux-worker", "worker"), ("conflux-sink", "sink")])
def test_conflux_services_run_real_cli_commands(compose: dict[str, Any], service: str, command: str) -> None:
    args = build_parser().parse_args(compose["services"][service]["command"][1:])
    assert args.command == command


def test_prometheus_scrapes_compose_services(compose: dict[str, Any]) -> None:
    prom = yaml.safe_load((REPO_ROOT / "infra" / "prometheus.yml").read_text())
    for job in prom["scrape_configs"]:
        for target in job["static_configs"][0]["targets"]:
            assert target.split(":")[0] in compose["services"], target


def test_compose_secrets_writes_every_required_variable(tmp_path: Path) -> None:
    """infra/compose-secrets.sh gives each ${VAR:?...} of the compose file a value, and Kafka its certificates."""
    import re
    import shutil
    import subprocess

    (tmp_path / "infra" / "kafka").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "infra" / "compose-secrets.sh", tmp_path / "infra")
    shutil.copy(REPO_ROOT / "infra" / "kafka" / "make-certs.sh", tmp_path / "infra" / "kafka")
    subprocess.run([str(tmp_path / "infra" / "compose-secrets.sh")], check=True, capture_output=True, timeout=60)
    written = dict(line.split("=", 1) for line in (tmp_path / ".env").read_text().splitlines())
    required = set(re.findall(r"\$\{([A-Z_]+):\?", (REPO_ROOT / "docker-compose.yml").read_text()))
    assert required and required <= set(written), required - set(written)
    assert all(len(v) == 64 for v in written.values())
    assert (tmp_path / ".env").stat().st_mode & 0o077 == 0  # the owner's only
    certs = tmp_path / "secrets" / "kafka"
    assert (certs / "kafka.p12").exists() and (certs / "ca.pem").exists()
