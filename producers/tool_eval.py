"""`make tool-eval`: how often tool-call arguments come back valid under their function's JSON Schema, through
the running platform, on tool specifications this team did not write.

The specifications are the 37 tools of the B3 benchmark as inspect-evals 0.28.0 ships them (MCP style: name,
description, inputSchema), from the same hash-pinned wheel as the safety data. Each tool is offered alone with
a named `tool_choice` (and every few calls, among three others with `tool_choice: required`), the request
asking for the task its description names; seeds and temperature 1 vary the samples. A tool whose schema uses
keywords outside OpenAI's strict subset is refused by the edge (400), counted apart, never as a valid call.

Prints JSON: calls made, valid, the rate, refused tools, time per call. Not run in CI (minutes of model time).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import jsonschema

from conflux.config import REPO_ROOT, Settings
from producers import safety_data

CACHE = REPO_ROOT / ".conflux" / "cache"
MODEL = "smollm2-135m-instruct"


def tool_specs(wheel: Path) -> list[dict[str, Any]]:
    with zipfile.ZipFile(wheel) as z:
        names = sorted(n for n in z.namelist() if "/b3/data/tool_specs/" in n and n.endswith(".json"))
        specs = [json.loads(z.read(n)) for n in names]
    return [{"type": "function", "function": {"name": s["name"], "description": s.get("description", ""),
                                              "parameters": s.get("inputSchema") or {"type": "object"}}}
            for s in specs]


def run(base: str, key: str, tools: list[dict[str, Any]], calls: int, max_tokens: int) -> dict[str, Any]:
    made = valid = 0
    refused: dict[str, str] = {}
    failures: list[dict[str, Any]] = []
    errors: list[str] = []
    seconds: list[float] = []
    usable = list(tools)
    with httpx.Client(timeout=180, headers={"Authorization": f"Bearer {key}"}) as http:
        i = 0
        while made + len(errors) < calls and usable:
            tool = usable[i % len(usable)]
            name = tool["function"]["name"]
            body: dict[str, Any] = {
                "model": MODEL, "temperature": 1.0, "seed": i, "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": f"Please do this for me: {tool['function']['description']}"}]}
            if i % 4 == 3:  # among others, the model picks
                body["tools"] = [tool, *(usable[(i + k) % len(usable)] for k in (1, 2, 3))]
                body["tool_choice"] = "required"
            else:
                body["tools"] = [tool]
                body["tool_choice"] = {"type": "function", "function": {"name": name}}
            i += 1
            t0 = time.perf_counter()
            resp = http.post(f"{base}/v1/chat/completions", json=body)
            seconds.append(time.perf_counter() - t0)
            if resp.status_code == 400 and resp.json()["error"]["param"] == "tools":
                refused[name] = resp.json()["error"]["message"]
                usable.remove(tool)
                continue
            if resp.status_code != 200:
                errors.append(f"{resp.status_code}: {resp.text[:200]}")
                continue
            choice = resp.json()["choices"][0]
            if choice["finish_reason"] == "length":
                errors.append(f"{name}: cut short by max_tokens {max_tokens}")
                continue
            for call in choice["message"].get("tool_calls") or []:
                made += 1
                schema = next(t["function"]["parameters"] for t in body["tools"]
                              if t["function"]["name"] == call["function"]["name"])
                try:
                    jsonschema.validate(json.loads(call["function"]["arguments"]), schema)
                    valid += 1
                except (ValueError, jsonschema.ValidationError) as exc:
                    failures.append({"tool": call["function"]["name"], "why": str(exc)[:200]})
            if made and made % 20 == 0:
                print(f"[tool-eval] {made} calls, {valid} valid", file=sys.stderr)
    seconds.sort()
    return {"calls": made, "valid": valid, "valid_rate": round(valid / made, 4) if made else None,
            "tools_offered": len(tools), "tools_refused": refused, "errors": errors, "invalid": failures,
            "seconds_per_request_p50": round(seconds[len(seconds) // 2], 2) if seconds else None,
            "conditions": {"model": MODEL, "temperature": 1.0, "max_tokens": max_tokens,
                           "source": "B3 tool specs in inspect-evals 0.28.0 (sha256-pinned wheel)"}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--max-tokens", type=int, default=400)
    p.add_argument("--wheels", type=Path, default=CACHE / "safety-wheels")
    args = p.parse_args()
    settings = Settings.from_env()
    wheels = safety_data.fetch_wheels(args.wheels)
    key = (settings.home / "dev-api-key").read_text().strip()
    result = run(f"http://127.0.0.1:{settings.edge_port}", key, tool_specs(wheels["inspect-evals"]), args.calls,
                 args.max_tokens)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
