"""Kafka connection settings: what each protocol needs, refused in one line when incomplete, never a password
in a repr (and so in a log)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from conflux.config import Settings
from conflux.errors import ConfigError
from conflux.kafka_access import KafkaAccess
from conflux.kafka_acls import load_grants


def test_plaintext_is_the_local_default() -> None:
    kafka = Settings.from_env({}).kafka
    assert kafka.client_options() == {"bootstrap_servers": "127.0.0.1:9092", "security_protocol": "PLAINTEXT"}
    assert kafka.faust_credentials() is None
    assert KafkaAccess.of("h:1") == KafkaAccess("h:1")


def test_sasl_ssl_from_the_environment() -> None:
    kafka = Settings.from_env({"CONFLUX_KAFKA_BOOTSTRAP": "k:9093", "CONFLUX_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                               "CONFLUX_KAFKA_USERNAME": "conflux-edge", "CONFLUX_KAFKA_PASSWORD": "s3cret"}).kafka
    opts = kafka.client_options()
    assert opts["security_protocol"] == "SASL_SSL" and opts["sasl_mechanism"] == "SCRAM-SHA-512"
    assert opts["sasl_plain_username"] == "conflux-edge" and opts["sasl_plain_password"] == "s3cret"
    assert isinstance(opts["ssl_context"], ssl.SSLContext)
    creds = kafka.faust_credentials()
    assert creds.protocol.value == "SASL_SSL" and creds.mechanism.value == "SCRAM-SHA-512"
    env = {"CONFLUX_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "CONFLUX_KAFKA_USERNAME": "u",
           "CONFLUX_KAFKA_PASSWORD": "s3cret"}
    assert "s3cret" not in repr(kafka) and "s3cret" not in repr(Settings.from_env(env))


@pytest.mark.parametrize(("env", "names"), [
    ({"CONFLUX_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "CONFLUX_KAFKA_USERNAME"),
    ({"CONFLUX_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "CONFLUX_KAFKA_USERNAME": "u"}, "CONFLUX_KAFKA_PASSWORD"),
    ({"CONFLUX_KAFKA_SECURITY_PROTOCOL": "TLS"}, "CONFLUX_KAFKA_SECURITY_PROTOCOL"),
    ({"CONFLUX_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "CONFLUX_KAFKA_USERNAME": "u",
      "CONFLUX_KAFKA_PASSWORD": "p", "CONFLUX_KAFKA_SASL_MECHANISM": "GSSAPI"}, "CONFLUX_KAFKA_SASL_MECHANISM"),
    ({"CONFLUX_KAFKA_SSL_CAFILE": "/ca.pem"}, "CONFLUX_KAFKA_SSL_CAFILE"),
])
def test_incomplete_settings_fail_at_start_naming_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        Settings.from_env(env)


def test_the_acl_file_grants_each_service_its_own_topics() -> None:
    bindings = load_grants()
    by = {(b.principal, b.resource, b.name, b.operation) for b in bindings}
    assert ("User:conflux-edge", "topic", "chat.requests", "WRITE") in by
    assert ("User:conflux-worker", "group", "conflux-chain", "READ") in by
    assert not any(p == "User:downstream" and op not in ("READ", "DESCRIBE") for p, _, _, op in by)
    assert not any(p == "User:conflux-edge" and name == "safety.verdicts" for p, _, name, _ in by)
    sink_reads = {name for p, r, name, op in by if p == "User:conflux-sink" and r == "topic" and op == "READ"}
    from conflux.topics import load_catalogue

    assert sink_reads == {t.name for t in load_catalogue().topics}  # "@catalogue", expanded


def test_a_malformed_acl_file_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "acls.toml"
    bad.write_text('[[grant]]\nprincipal = "x"\nresource = "topic"\nnames = ["t"]\noperations = ["WRIT"]\n')
    with pytest.raises(ConfigError, match="operations"):
        load_grants(bad, catalogue_topics=[])
