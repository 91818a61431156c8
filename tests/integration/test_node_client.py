"""The official openai npm package (tests/node, installed by `make install-node`) against the edge: a streamed
tool call and its follow-up, a strict json_schema answer, embeddings and a streamed Responses call."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from conflux.config import REPO_ROOT, Settings
from tests.integration.helpers import new_tenant_key_sync

NODE_DIR = REPO_ROOT / "tests" / "node"


def test_the_official_node_client_works_unchanged(stack: Settings) -> None:
    if shutil.which("node") is None or not (NODE_DIR / "node_modules" / "openai").exists():
        pytest.fail("node and the openai npm package are needed: `make install-node` (CI runs it)")
    _, key = new_tenant_key_sync(stack, "pro")
    env = {**os.environ, "CONFLUX_BASE": f"http://127.0.0.1:{stack.edge_port}/v1", "CONFLUX_KEY": key}
    run = subprocess.run(["node", "openai_check.mjs"], cwd=NODE_DIR, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["tool_call"]["name"] == "get_weather" and 1 <= result["tool_call"]["arguments"]["days"] <= 7
    assert result["embeddings"]["dim"] == 384 and result["responses"]["status"] == "completed"
