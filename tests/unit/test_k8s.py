"""The Kubernetes manifests (infra/k8s) cannot be applied here (no cluster), so they are checked offline:
against the Kubernetes JSON schemas that ship in the kubernetes-validate wheel, KEDA's ScaledObject against
the CRD schema in KEDA's own Go module (from the Go module proxy), and against the code they configure."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
import zipfile
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from conflux.config import REPO_ROOT
from streams.app import CHAIN_GROUP

K8S = REPO_ROOT / "infra" / "k8s"
KUBERNETES = "1.33.0"  # the oldest minor still supported upstream when this was written
KEDA = "v2.21.0"


def _docs() -> list[tuple[str, dict[str, Any]]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [(name, doc) for name in kustomization["resources"]
            for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


DOCS = _docs()


def _kind(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in DOCS if d["kind"] == kind]


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


@pytest.mark.parametrize(("name", "doc"), [(n, d) for n, d in DOCS if d["apiVersion"] != "keda.sh/v1alpha1"],
                         ids=lambda x: x if isinstance(x, str) else f"{x['kind']}/{x['metadata']['name']}")
def test_manifest_is_valid_kubernetes(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES, strict=True)  # strict: an unknown field is an error


def test_the_kubernetes_check_can_fail() -> None:
    (edge, *_) = _kind("Deployment")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({**edge, "spec": {**edge["spec"], "replica": 2}}, KUBERNETES, strict=True)


def _keda_crd_schema(crd_file: str = "keda.sh_scaledobjects.yaml") -> dict[str, Any]:
    """A KEDA kind's openAPIV3Schema from its CRD, in the Go module the Go module proxy serves."""
    found = subprocess.run(["go", "mod", "download", "-json", f"github.com/kedacore/keda/v2@{KEDA}"],
                           capture_output=True, text=True, timeout=300, check=True)
    with zipfile.ZipFile(json.loads(found.stdout)["Zip"]) as z:
        crd = yaml.safe_load(z.read(f"github.com/kedacore/keda/v2@{KEDA}/config/crd/bases/{crd_file}"))
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema: dict[str, Any] = _closed(version["schema"]["openAPIV3Schema"])
    return schema


def _closed(schema: Any) -> Any:
    """Kubernetes drops fields a structural schema does not name; here they are errors, so a misspelt field
    fails instead of vanishing."""
    if isinstance(schema, dict):
        schema = {k: _closed(v) for k, v in schema.items()}
        if schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [_closed(v) for v in schema]
    return schema


def test_scaled_object_is_valid_for_kedas_crd() -> None:
    schema = _keda_crd_schema()
    (scaled,) = _kind("ScaledObject")
    jsonschema.validate(scaled, schema)
    with pytest.raises(jsonschema.ValidationError):  # the check can fail: a misspelt field is refused
        jsonschema.validate({**scaled, "spec": {**scaled["spec"], "maxReplicas": 3}}, schema)


def test_trigger_authentication_is_valid_for_kedas_crd_and_used_by_the_scaler() -> None:
    schema = _keda_crd_schema("keda.sh_triggerauthentications.yaml")
    (auth,) = _kind("TriggerAuthentication")
    jsonschema.validate(auth, schema)
    (scaled,) = _kind("ScaledObject")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    assert trigger["metadata"]["sasl"] == "scram_sha512" and trigger["metadata"]["tls"] == "enable"
    assert {r["parameter"] for r in auth["spec"]["secretTargetRef"]} == {"username", "password"}


def test_each_workload_is_its_own_kafka_principal_with_secrets_from_the_secret() -> None:
    from conflux.kafka_acls import load_grants

    granted = {b.principal.removeprefix("User:") for b in load_grants()}
    (config,) = _kind("ConfigMap")
    assert config["data"]["CONFLUX_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    users = {}
    for _, doc in DOCS:
        for pod in _pod_specs(doc):
            for c in pod["containers"]:
                env = {e["name"]: e for e in c.get("env", [])}
                users[doc["metadata"]["name"]] = env["CONFLUX_KAFKA_USERNAME"]["value"]
                for name, e in env.items():
                    if any(word in name for word in ("PASSWORD", "SECRET", "API_KEY")):
                        assert "secretKeyRef" in e["valueFrom"] and "value" not in e, name
    assert users == {"conflux-edge": "conflux-edge", "conflux-worker": "conflux-worker",
                     "conflux-sink": "conflux-sink", "conflux-topics": "conflux-topics",
                     "conflux-prune-replies": "conflux-topics"}, users
    assert set(users.values()) <= granted


def test_workers_scale_on_the_chain_groups_lag_within_the_request_topics_partitions() -> None:
    (scaled,) = _kind("ScaledObject")
    (trigger,) = scaled["spec"]["triggers"]
    meta = trigger["metadata"]
    (config,) = _kind("ConfigMap")
    topics = tomllib.loads((REPO_ROOT / "infra" / "topics.toml").read_text())
    (requests,) = [t for t in topics["topic"] if t["name"] == "chat.requests"]
    assert trigger["type"] == "kafka" and meta["topic"] == "chat.requests" and meta["consumerGroup"] == CHAIN_GROUP
    assert meta["bootstrapServers"] == config["data"]["CONFLUX_KAFKA_BOOTSTRAP"]
    assert scaled["spec"]["maxReplicaCount"] <= requests["partitions"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == "conflux-worker"


def test_every_variable_a_manifest_sets_is_one_the_platform_reads() -> None:
    read = set(re.findall(r"CONFLUX_[A-Z0-9_]+", (REPO_ROOT / "conflux" / "config.py").read_text()))
    set_here: set[str] = set()
    for _, doc in DOCS:
        set_here |= set(doc.get("data", {})) if doc["kind"] == "ConfigMap" else set()
        for pod in _pod_specs(doc):
            for c in pod["containers"]:
                set_here |= {e["name"] for e in c.get("env", [])}
    assert set_here and set_here <= read, sorted(set_here - read)


def _pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] == "CronJob":
        return [doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]]
    return [doc["spec"]["template"]["spec"]] if doc["kind"] in ("Deployment", "Job") else []


def test_services_have_probes_requests_and_a_disruption_budget() -> None:
    budgets = {tuple(sorted(p["spec"]["selector"]["matchLabels"].items())) for p in _kind("PodDisruptionBudget")}
    for dep in _kind("Deployment"):
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        assert c["readinessProbe"] and c["livenessProbe"], dep["metadata"]["name"]
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"], dep["metadata"]["name"]
        assert c["resources"]["limits"]["memory"], dep["metadata"]["name"]
        assert tuple(sorted(dep["spec"]["selector"]["matchLabels"].items())) in budgets, dep["metadata"]["name"]
        assert dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    (hpa,) = _kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "conflux-edge"


def test_the_id_secret_comes_from_a_secret_never_from_the_manifests() -> None:
    text = "\n".join(p.read_text() for p in K8S.glob("*.yaml"))
    assert "CONFLUX_ID_SECRET" not in (K8S / "config.yaml").read_text().split("data:")[1]
    for dep in _kind("Deployment"):
        for c in dep["spec"]["template"]["spec"]["containers"]:
            for e in c.get("env", []):
                if e["name"] == "CONFLUX_ID_SECRET":
                    assert "secretKeyRef" in e["valueFrom"] and "value" not in e
    assert "kind: Secret" not in text


def test_the_commands_are_cli_commands() -> None:
    from conflux.cli import build_parser

    parser = build_parser()
    for _, doc in DOCS:
        for pod in _pod_specs(doc):
            for c in pod["containers"]:
                assert c["command"][0] == "conflux"
                parser.parse_args(c["command"][1:])  # exits (SystemExit) on an unknown command or flag



def test_prune_replies_refuses_a_negative_grace_and_reports_an_unreachable_broker(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The CronJob's command: its failures are one line and exit 2, never a stack trace."""
    from conflux.cli import main

    monkeypatch.setenv("CONFLUX_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # nothing listens there
    assert main(["topics", "prune-replies", "--grace-s", "-1"]) == 2
    assert "--grace-s is seconds" in capsys.readouterr().err
    assert main(["topics", "prune-replies"]) == 2
    err = capsys.readouterr().err
    assert "Kafka at 127.0.0.1:1" in err and "Traceback" not in err
