"""Typed errors. Callers catch these, never bare exceptions, and show their message to the user."""


class ConfluxError(Exception):
    """Base of every error Conflux raises on purpose."""


class ConfigError(ConfluxError):
    """A setting is missing or malformed."""


class SerdeError(ConfluxError):
    """Base of the errors raised while encoding or decoding an event."""


class EncodeError(SerdeError):
    """A record does not match its event schema."""


class DecodeError(SerdeError):
    """Bytes could not be decoded into an event."""


class NotSingleObjectError(DecodeError):
    """The bytes lack the Avro single-object marker C3 01 (or are too short to hold a header)."""


class UnknownSchemaError(DecodeError):
    """The fingerprint in the header names no schema in schemas/ or its history."""


class MalformedPayloadError(DecodeError):
    """The header is fine but the body is truncated, has trailing bytes, or is not valid Avro."""


class SchemaError(ConfluxError):
    """A schema file is invalid, or a schema change is incompatible with its previous version."""


class CatalogueError(ConfluxError):
    """The topic catalogue is invalid or refers to an unknown schema."""


class ServiceError(ConfluxError):
    """A local service could not be installed, started or stopped."""


class VectorStoreError(ConfluxError):
    """The vector store rejected a request or is unreachable."""


class PublishError(ConfluxError):
    """The broker did not acknowledge an event in time (it is down or unreachable)."""
