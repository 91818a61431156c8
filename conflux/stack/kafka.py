"""Apache Kafka in KRaft mode (one broker that is also its controller), jars from Maven Central.

3.9.x, not 4.x: Kafka 4 dropped protocol versions that aiokafka and Faust still send (faust-streaming #667).
Data lives under .conflux/kafka/data and survives restarts and SIGKILL: an acks=all write is in the
broker's log (page cache) before it is acknowledged, and log recovery on restart keeps it.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

from conflux.errors import ServiceError
from conflux.stack.base import Health, LaunchSpec, Progress, Service, apt_install, run_step

_LOG4J = """log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=INFO
log4j.logger.state.change.logger=WARN
"""


class KafkaService(Service):
    name = "kafka"
    start_timeout_s = 90.0
    stop_timeout_s = 30.0

    @property
    def root(self) -> Path:
        return self.settings.home / "kafka"

    @property
    def libs(self) -> Path:
        return self.root / "libs"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def endpoint(self) -> str:
        return f"kafka://{self.settings.kafka_bootstrap}"

    def install(self, progress: Progress) -> None:
        marker = self.libs / f"kafka_2.13-{self.settings.kafka_version}.jar"
        if marker.exists():
            return
        missing = [pkg for tool, pkg in (("java", "openjdk-17-jre-headless"), ("mvn", "maven"))
                   if shutil.which(tool) is None]
        if missing:
            apt_install(missing, progress, self.settings.logs_dir / "install.log")
        if self.libs.exists():
            shutil.rmtree(self.libs)  # another version's jars must not share the classpath
        pom = self.settings.repo_root / "infra" / "kafka" / "pom.xml"
        run_step(
            ["mvn", "-q", "-B", "-f", str(pom), f"-Dkafka.version={self.settings.kafka_version}",
             "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={self.libs}"],
            f"resolving Apache Kafka {self.settings.kafka_version} jars from Maven Central", progress,
            log=self.settings.logs_dir / "install.log",
        )
        if not marker.exists():
            raise ServiceError(f"maven finished but {marker} is missing")

    def _properties(self) -> str:
        s = self.settings
        return "\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{s.kafka_controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{s.kafka_port},CONTROLLER://127.0.0.1:{s.kafka_controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{s.kafka_port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={self.data}",
            "num.partitions=1",
            "default.replication.factor=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=8",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=4",
            "group.initial.rebalance.delay.ms=0",
            # Topics come from infra/topics.toml; a typo in a consumer must not create a stray topic.
            "auto.create.topics.enable=false",
            "message.max.bytes=10485760",
            "log.retention.check.interval.ms=60000",
            "",
        ])

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "server.properties").write_text(self._properties())
        (self.root / "log4j.properties").write_text(_LOG4J)
        if (self.data / "meta.properties").exists():
            return
        cluster_file = self.root / "cluster-id"
        if not cluster_file.exists():
            # KRaft cluster ids are 16 random bytes in URL-safe base64 without padding.
            cluster_file.write_text(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))
        proc = subprocess.run(
            ["java", "-cp", f"{self.libs}/*", f"-Dlog4j.configuration=file:{self.root / 'log4j.properties'}",
             # `--cluster-id=ID`, not `-t ID`: a random id can start with "-", which the tool then reads as an
             # option ("expected one argument"; one CI run in 64 on a fresh machine).
             "kafka.tools.StorageTool", "format", "--ignore-formatted",
             f"--cluster-id={cluster_file.read_text().strip()}",
             "-c", str(self.root / "server.properties")],
            capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            raise ServiceError(f"kafka storage format failed: {proc.stdout}{proc.stderr}")

    def launch(self) -> LaunchSpec:
        return LaunchSpec(
            argv=[
                "java", f"-Xms{self.settings.kafka_heap}", f"-Xmx{self.settings.kafka_heap}",
                # The heap is committed and touched at start (Xms = Xmx, AlwaysPreTouch), so the broker's
                # resident memory is flat from the start instead of creeping up as the heap is first used.
                "-XX:+AlwaysPreTouch", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
                f"-Dlog4j.configuration=file:{self.root / 'log4j.properties'}",
                f"-Dkafka.logs.dir={self.settings.logs_dir}",
                "-cp", f"{self.libs}/*", "kafka.Kafka", str(self.root / "server.properties"),
            ],
            cwd=self.root,
        )

    def health(self) -> Health:
        host, _, port = self.settings.kafka_bootstrap.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                pass
        except OSError as exc:
            return Health(False, f"port closed: {exc}")
        try:
            return asyncio.run(asyncio.wait_for(_metadata_probe(self.settings.kafka_bootstrap), 5))
        except (TimeoutError, OSError) as exc:
            return Health(False, f"metadata request failed: {exc!r}")


async def _metadata_probe(bootstrap: str) -> Health:
    """A real Kafka request: the broker answers metadata and knows a controller."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await admin.start()
        cluster = await admin.describe_cluster()
        return Health(True, f"cluster {cluster['cluster_id']}, controller {cluster['controller_id']}")
    except KafkaError as exc:
        return Health(False, f"metadata request failed: {exc!r}")
    finally:
        await admin.close()
