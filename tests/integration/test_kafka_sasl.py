"""Kafka with SASL/SCRAM over TLS and ACLs, as docker-compose runs it: infra/kafka/start-sasl.sh itself (the
compose file's Kafka command), with a certificate from infra/kafka/make-certs.sh, on the local stack's Kafka
jars (two shims stand in for the image's kafka-storage.sh and kafka-server-start.sh), on ports of its own. The
grants of infra/kafka/acls.toml are applied with `conflux topics acls`'s code; then each service's principal
can do what that service does and nothing else, a user without grants is refused, a wrong password or a
PLAINTEXT client does not get in."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis as redis_lib
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    TopicAuthorizationFailedError,
)

from conflux.config import REPO_ROOT, Settings
from conflux.kafka import make_consumer, make_producer
from conflux.kafka_access import KafkaAccess
from conflux.kafka_acls import apply_acls, load_grants
from conflux.topics import TopicSpec, apply_topics, load_catalogue
from tests import procs

SERVICE_USERS = {"admin": "CONFLUX_KAFKA_ADMIN_PASSWORD", "conflux-topics": "CONFLUX_KAFKA_TOPICS_PASSWORD",
                 "conflux-edge": "CONFLUX_KAFKA_EDGE_PASSWORD", "conflux-worker": "CONFLUX_KAFKA_WORKER_PASSWORD",
                 "conflux-sink": "CONFLUX_KAFKA_SINK_PASSWORD"}
MECHANISM = "SCRAM-SHA-512"
REFUSED_WRITE = (TopicAuthorizationFailedError, ClusterAuthorizationFailedError)
FILES: dict[str, str] = {}  # the test CA's certificate and the admin's client settings, set by the fixture


def _password(user: str) -> str:
    return f"{user.replace('-', '')}0secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def sasl_broker(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("kafka-sasl")
    certs, bin_dir = root / "certs", root / "kafka" / "bin"
    subprocess.run([str(REPO_ROOT / "infra" / "kafka" / "make-certs.sh"), str(certs), "localhost", "storepass1"],
                   check=True, capture_output=True, timeout=60)
    FILES.update(ca=str(certs / "ca.pem"), admin_conf=str(root / "admin-client.properties"),
                 libs=str(stack.home / "kafka" / "libs"))
    bin_dir.mkdir(parents=True)
    java = f'java -Xmx256m -cp "{stack.home / "kafka" / "libs"}/*" ' \
           f'-Dlog4j.configuration=file:{stack.home / "kafka" / "log4j.properties"}'
    for name, main in (("kafka-storage.sh", "kafka.tools.StorageTool"), ("kafka-server-start.sh", "kafka.Kafka")):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec {java} -Dkafka.logs.dir={root} {main} "$@"\n')
        (bin_dir / name).chmod(0o755)
    port = _free_port()
    env = {"PATH": os.environ["PATH"], "KAFKA_HOME": str(root / "kafka"), "KAFKA_DATA": str(root / "data"),
           "KAFKA_HOST": "localhost", "KAFKA_LISTEN": "127.0.0.1", "KAFKA_PORT": str(port),
           "KAFKA_CONTROLLER_PORT": str(_free_port()), "KAFKA_KEYSTORE": str(certs / "kafka.p12"),
           "KAFKA_CA": str(certs / "ca.pem"),
           "KAFKA_ADMIN_CLIENT_CONF": str(root / "admin-client.properties"),
           "KAFKA_KEYSTORE_PASSWORD": "storepass1", "KAFKA_CONF": str(root / "server.properties"),
           "KAFKA_EXTRA_USERS": f"downstream:{_password('downstream')} intruder:{_password('intruder')}",
           **{var: _password(user) for user, var in SERVICE_USERS.items()}}
    with open(root / "broker.log", "w") as log:
        proc = subprocess.Popen([str(REPO_ROOT / "infra" / "kafka" / "start-sasl.sh")], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    bootstrap = f"localhost:{port}"
    try:
        deadline = time.monotonic() + 120
        while not _answers(access(bootstrap, "admin")):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the SASL broker did not start: {(root / 'broker.log').read_text()[-3000:]}")
            time.sleep(1)
        yield bootstrap
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_start_script_refuses_to_start_without_its_secrets() -> None:
    run = subprocess.run([str(REPO_ROOT / "infra" / "kafka" / "start-sasl.sh")], env={"PATH": os.environ["PATH"]},
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 2 and "KAFKA_KEYSTORE_PASSWORD is not set" in run.stderr


def access(bootstrap: str, user: str, password: str | None = None) -> KafkaAccess:
    return KafkaAccess(bootstrap, "SASL_SSL", MECHANISM, user, password or _password(user), FILES["ca"])


def _answers(kafka: KafkaAccess) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient

    async def probe() -> bool:
        admin = AIOKafkaAdminClient(**kafka.client_options(), request_timeout_ms=3000)
        try:
            await admin.start()
            await admin.describe_cluster()
            return True
        except KafkaError:
            return False
        finally:
            await admin.close()

    return asyncio.run(probe())


@pytest.fixture(scope="module")
def granted(sasl_broker: str) -> str:
    """The catalogue's topics, created by conflux-topics (its own grants), after the super user applied the ACLs."""
    bindings = load_grants()

    async def setup() -> None:
        assert await apply_acls(access(sasl_broker, "admin"), bindings) == len(bindings)
        assert await apply_acls(access(sasl_broker, "admin"), bindings) == len(bindings)  # idempotent
        await apply_topics(access(sasl_broker, "conflux-topics"), load_catalogue().topics)

    asyncio.run(setup())
    return sasl_broker


async def _produce(kafka: KafkaAccess, topic: str, value: bytes = b"x") -> None:
    producer = make_producer(kafka, request_timeout_ms=10000)
    try:
        await producer.start()
        await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()


async def _read_one(kafka: KafkaAccess, group: str, topic: str) -> bytes:
    consumer = make_consumer(kafka, group, topic, auto_offset_reset="earliest")
    try:
        await consumer.start()
        batch = await consumer.getmany(timeout_ms=10000)
        values: list[bytes] = [r.value for records in batch.values() for r in records]
        assert values, f"nothing read from {topic}"
        return values[0]
    finally:
        await consumer.stop()


async def test_each_service_can_do_what_it_does(granted: str) -> None:
    marker = uuid.uuid4().hex.encode()
    await _produce(access(granted, "conflux-edge"), "chat.requests", marker)
    reply = TopicSpec(f"chat.replies.edge-{uuid.uuid4().hex[:6]}", "chat_chunk", "request_id", 1, 3_600_000,
                      "delete", "")
    await apply_topics(access(granted, "conflux-edge"), [reply])  # an edge creates its own reply topic
    await _produce(access(granted, "conflux-worker"), reply.name)  # and a worker answers on it
    await _produce(access(granted, "conflux-worker"), "safety.verdicts")
    assert await _read_one(access(granted, "conflux-worker"), "conflux-chain", "chat.requests") == marker
    assert await _read_one(access(granted, "downstream"), "downstream.analytics", "chat.requests") == marker
    assert await _read_one(access(granted, "conflux-sink"), "conflux-clickhouse-sink", "chat.requests") == marker


async def test_workflows_run_on_the_grants(granted: str) -> None:
    """An edge starts a run on workflow.runs; a worker reads it, queues steps on workflow.tasks, reads them, records
    them on workflow.steps and ends the run on workflow.runs (streams/workflow/)."""
    marker = uuid.uuid4().hex.encode()
    await _produce(access(granted, "conflux-edge"), "workflow.runs", marker)
    worker = access(granted, "conflux-worker")
    for topic in ("workflow.tasks", "workflow.steps", "workflow.runs"):
        await _produce(worker, topic, marker)
    assert await _read_one(worker, "conflux-chain", "workflow.runs") == marker
    assert await _read_one(worker, "conflux-chain", "workflow.tasks") == marker


async def test_what_a_service_does_not_do_is_refused(granted: str) -> None:
    with pytest.raises(TopicAuthorizationFailedError):
        await _produce(access(granted, "conflux-edge"), "safety.verdicts")  # a worker's topic
    # Other teams only read: with WRITE on no topic at all, even an idempotent producer's id is refused.
    with pytest.raises(REFUSED_WRITE):
        await _produce(access(granted, "downstream"), "chat.requests")
    with pytest.raises(GroupAuthorizationFailedError):
        await _read_one(access(granted, "downstream"), "conflux-chain", "chat.requests")  # not the chain's group


async def test_a_user_without_grants_is_refused(granted: str) -> None:
    with pytest.raises(REFUSED_WRITE):
        await _produce(access(granted, "intruder"), "chat.requests")
    with pytest.raises((TopicAuthorizationFailedError, GroupAuthorizationFailedError)):
        await _read_one(access(granted, "intruder"), "downstream.intruder", "chat.requests")


async def test_a_wrong_password_does_not_get_in(granted: str) -> None:
    with pytest.raises(KafkaConnectionError):
        await _produce(access(granted, "conflux-edge", password="guess"), "chat.requests")


def _service_env(bootstrap: str, user: str) -> dict[str, str]:
    return {"CONFLUX_KAFKA_BOOTSTRAP": bootstrap, "CONFLUX_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "CONFLUX_KAFKA_USERNAME": user, "CONFLUX_KAFKA_PASSWORD": _password(user),
            "CONFLUX_KAFKA_SSL_CAFILE": FILES["ca"]}


def test_a_chat_runs_through_an_edge_and_a_worker_each_with_only_its_grants(stack: Settings, granted: str) -> None:
    """The real services, each as its own principal on this broker (Redis, Triton and the vector store are the
    local stack's): the grants of acls.toml are enough for the edge and for Faust's worker, end to end."""
    port = _free_port()
    edge = procs.edge(stack, "edge-sasl", port, _service_env(granted, "conflux-edge")).start()
    worker = procs.worker(stack, "worker-sasl", _service_env(granted, "conflux-worker")).start()
    try:
        procs.wait_edge(edge, port)
        procs.wait_worker(worker, "worker-sasl")
        key = (stack.home / "dev-api-key").read_text().strip()
        body = {"model": "echo", "max_tokens": 4, "messages": [{"role": "user", "content": "sasl acl check"}]}
        resp = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=60,
                          headers={"Authorization": f"Bearer {key}"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["message"]["content"] == "sasl acl check sasl"
    finally:
        edge.stop()
        worker.stop()
    # Stopped cleanly, the edge took its heartbeat with it: its reply topic's grace period starts now.
    assert not redis_lib.Redis.from_url(stack.redis_url).exists("conflux:edge:edge-sasl")
    for proc in (edge, worker):
        log = proc.log_path.read_text()
        assert "AuthorizationFailed" not in log, f"{proc.name}: {log[-3000:]}"
        assert _password("conflux-edge") not in log and _password("conflux-worker") not in log


def test_the_compose_health_check_gets_in_as_admin(granted: str) -> None:
    """docker-compose's health check: kafka-broker-api-versions.sh with the client file start-sasl.sh writes."""
    run = subprocess.run(["java", "-cp", f"{FILES['libs']}/*", "kafka.admin.BrokerApiVersionsCommand",
                          "--bootstrap-server", granted, "--command-config", FILES["admin_conf"]],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "Produce(0)" in run.stdout, run.stderr[-2000:]


def test_plaintext_clients_cannot_talk_to_a_sasl_listener(granted: str) -> None:
    assert not _answers(KafkaAccess(granted))
