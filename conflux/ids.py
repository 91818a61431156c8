"""Response ids that prove their tenant: `chatcmpl-<32 hex id><16 hex HMAC(secret, tenant|id)>`.

Feedback and the HTTP bridge must refuse another tenant's response id. Checking the signature needs no
lookup, so ownership costs no storage per request (a Redis key per request for 30 days grew without bound
with traffic). Every edge of a deployment shares the secret (CONFLUX_ID_SECRET); locally `conflux up` keeps
one in .conflux/id-secret.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import uuid
from pathlib import Path

from conflux.config import Settings
from conflux.errors import ConfigError

_ID = re.compile(r"^chatcmpl-([0-9a-f]{32})([0-9a-f]{16})$")


class ResponseIds:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ConfigError("the response-id secret must be at least 16 bytes")
        self._secret = secret

    def new(self, tenant_id: str) -> str:
        body = uuid.uuid4().hex
        return f"chatcmpl-{body}{self._sign(tenant_id, body)}"

    def owned_by(self, response_id: str, tenant_id: str) -> bool:
        """True only for an id this deployment issued to this tenant (unknown and foreign ids look alike)."""
        m = _ID.match(response_id)
        return bool(m) and hmac.compare_digest(m[2], self._sign(tenant_id, m[1]))  # type: ignore[index]

    def _sign(self, tenant_id: str, body: str) -> str:
        return hmac.new(self._secret, f"{tenant_id}|{body}".encode(), hashlib.sha256).hexdigest()[:16]


def load_secret(settings: Settings) -> bytes:
    """CONFLUX_ID_SECRET, else the local stack's own secret file (created once, mode 0600)."""
    if settings.id_secret:
        return settings.id_secret.encode()
    path: Path = settings.home / "id-secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip().encode()
