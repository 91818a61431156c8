"""How a process reaches the Kafka brokers: where, over what, and as whom.

The local stack is PLAINTEXT on 127.0.0.1. Clusters use SASL/SCRAM over TLS (SASL_SSL), each Conflux service
with its own principal (infra/kafka/acls.toml says what each may touch). Every Kafka client in the platform
(aiokafka producers, consumers and admin clients, and Faust's) takes its options from here, so no client can
be left on PLAINTEXT by accident.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from conflux.errors import ConfigError

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")


@dataclass(frozen=True)
class KafkaAccess:
    bootstrap: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "SCRAM-SHA-512"
    username: str = ""
    password: str = field(default="", repr=False)
    ssl_cafile: str = ""  # PEM bundle that signed the brokers' certificates; empty: the system's CAs

    def __post_init__(self) -> None:
        if self.security_protocol not in PROTOCOLS:
            raise ConfigError(f"CONFLUX_KAFKA_SECURITY_PROTOCOL must be one of {', '.join(PROTOCOLS)}, "
                              f"got {self.security_protocol!r}")
        if self.sasl:
            if self.sasl_mechanism not in MECHANISMS:
                raise ConfigError(f"CONFLUX_KAFKA_SASL_MECHANISM must be one of {', '.join(MECHANISMS)}, "
                                  f"got {self.sasl_mechanism!r}")
            if not self.username or not self.password:
                raise ConfigError(f"{self.security_protocol} needs CONFLUX_KAFKA_USERNAME and CONFLUX_KAFKA_PASSWORD")
        if self.ssl_cafile and not self.tls:
            raise ConfigError("CONFLUX_KAFKA_SSL_CAFILE is set but the protocol has no TLS (SSL or SASL_SSL)")

    @property
    def sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @classmethod
    def of(cls, target: KafkaAccess | str) -> KafkaAccess:
        """A bare "host:port" is a PLAINTEXT bootstrap (the local stack, tests, benchmarks)."""
        return target if isinstance(target, KafkaAccess) else cls(target)

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka's producer, consumer and admin client."""
        opts: dict[str, Any] = {"bootstrap_servers": self.bootstrap, "security_protocol": self.security_protocol}
        if self.sasl:
            opts.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.username,
                        sasl_plain_password=self.password)
        if self.tls:
            opts["ssl_context"] = self.ssl_context()
        return opts

    def ssl_context(self) -> Any:
        from aiokafka.helpers import create_ssl_context

        return create_ssl_context(cafile=self.ssl_cafile or None)

    def faust_credentials(self) -> Any:
        """Faust's broker_credentials (None on PLAINTEXT)."""
        import faust

        if self.sasl:
            return faust.SASLCredentials(username=self.username, password=self.password,
                                         mechanism=self.sasl_mechanism,
                                         ssl_context=self.ssl_context() if self.tls else None)
        if self.tls:
            return faust.SSLCredentials(self.ssl_context())
        return None
