"""The OpenAI Agents SDK (its own venv, `make install-agents`) runs a tool-using agent against the edge."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conflux.config import REPO_ROOT, Settings
from tests.integration.helpers import new_tenant_key_sync

PYTHON = REPO_ROOT / ".conflux" / "agents-venv" / "bin" / "python"


def test_an_agent_calls_its_tool_and_answers(stack: Settings) -> None:
    if not PYTHON.exists():
        pytest.fail("the Agents SDK venv is missing: `make install-agents` (CI runs it)")
    _, key = new_tenant_key_sync(stack, "pro")
    env = {**os.environ, "CONFLUX_BASE": f"http://127.0.0.1:{stack.edge_port}/v1", "CONFLUX_KEY": key}
    run = subprocess.run([str(PYTHON), str(REPO_ROOT / "tests" / "agents" / "agent_run.py")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["tool_calls"] and result["final_output"]
