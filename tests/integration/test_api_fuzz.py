"""schemathesis against the edge's OpenAPI schema: no 5xx for any generated request, every response matches
its documented schema, and every 4xx is an OpenAI-format error (tests/st_hooks.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conflux.config import REPO_ROOT, Settings

EXAMPLES = 25  # per operation and phase; about 800 requests, ~15 s


def test_schemathesis_finds_no_server_error_and_only_documented_errors(stack: Settings) -> None:
    key = (stack.home / "dev-api-key").read_text().strip()
    cli = Path(sys.executable).parent / "schemathesis"
    run = subprocess.run(
        [str(cli), "run", f"http://127.0.0.1:{stack.edge_port}/openapi.json",
         "--checks", "not_a_server_error,response_schema_conformance,openai_error_format",
         "--max-examples", str(EXAMPLES), "--phases", "examples,coverage,fuzzing", "--seed", "1",
         "--request-timeout", "30", "--header", f"Authorization: Bearer {key}"],
        capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.st_hooks", "PYTHONPATH": str(REPO_ROOT)})
    summary = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert run.returncode == 0 and summary, run.stdout[-4000:] + run.stderr[-2000:]
    assert int(summary[1]) == int(summary[2]) >= 300
    print(f"schemathesis: {summary[0]}")
