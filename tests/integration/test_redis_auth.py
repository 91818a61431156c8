"""Redis with a password (as docker-compose runs it): the platform's client authenticates with
CONFLUX_REDIS_PASSWORD, and without it, or with a wrong one, Redis refuses."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.exceptions import AuthenticationError, ResponseError

from conflux.config import Settings
from conflux.redis_client import redis_client

PASSWORD = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def redis_with_password(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = shutil.which("redis-server")
    assert server, "redis-server is not installed (CI installs it)"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root: Path = tmp_path_factory.mktemp("redis-auth")
    proc = subprocess.Popen([server, "--bind", "127.0.0.1", "--port", str(port), "--requirepass", PASSWORD,
                             "--save", "", "--appendonly", "no", "--dir", str(root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_the_platforms_client_authenticates_from_configuration(redis_with_password: str) -> None:
    settings = Settings.from_env({"CONFLUX_REDIS_URL": redis_with_password, "CONFLUX_REDIS_PASSWORD": PASSWORD})
    client = redis_client(settings.redis_url, settings.redis_password)
    try:
        assert await client.set("conflux:auth-check", "1") and await client.get("conflux:auth-check") == b"1"
    finally:
        await client.aclose()
    assert PASSWORD not in repr(settings)


@pytest.mark.parametrize("password", ["", "wrong-password"])
async def test_without_the_password_redis_refuses(redis_with_password: str, password: str) -> None:
    client = redis_client(redis_with_password, password)
    try:
        with pytest.raises((AuthenticationError, ResponseError)):  # NOAUTH without one, WRONGPASS with a bad one
            await client.get("conflux:auth-check")
    finally:
        await client.aclose()
