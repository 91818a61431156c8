"""`make tool-eval`: how often tool-call arguments come back valid under their function's JSON Schema, through
the running platform, on tool specifications this team did not write.

The specifications are the 37 tools of the B3 benchmark as inspect-evals 0.28.0 ships them (MCP style: name,
description, inputSchema), from the same hash-pinned wheel as the safety data. Each tool is offered alone with
a named `tool_choice` (and every few calls, among three others with `tool_choice: required`), the request
asking for the task its description names; seeds and temperature 1 vary the samples. A tool whose schema uses
keywords outside OpenAI's strict subset is refused (the edge's own check, conflux/grammar.py), counted apart,
never as a valid call; a request cut short by max_tokens or ending in an error is counted as an error, not a call.

Prints JSON: calls made, valid, the rate, refused tools, time per call. Not run in CI (minutes of model time).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jsonschema

from conflux import grammar
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


def request_body(i: int, tools: list[dict[str, Any]], max_tokens: int) -> dict[str, Any]:
    tool = tools[i % len(tools)]
    body: dict[str, Any] = {
        "model": MODEL, "temperature": 1.0, "seed": i, "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": f"Please do this for me: {tool['function']['description']}"}]}
    if i % 4 == 3:  # among others, the model picks
        body["tools"] = [tool, *(tools[(i + k) % len(tools)] for k in (1, 2, 3))]
        body["tool_choice"] = "required"
    else:
        body["tools"] = [tool]
        body["tool_choice"] = {"type": "function", "function": {"name": tool["function"]["name"]}}
    return body


def run(base: str, key: str, tools: list[dict[str, Any]], calls: int, max_tokens: int,
        concurrency: int, first: int = 0) -> dict[str, Any]:
    refused: dict[str, str] = {}
    for t in tools:  # the edge's own check (conflux/grammar.py): refused tools are never sent
        try:
            grammar.check_schema(t["function"]["parameters"])
        except grammar.SchemaError as exc:
            refused[t["function"]["name"]] = str(exc)
    usable = [t for t in tools if t["function"]["name"] not in refused]
    made = valid = 0
    failures: list[dict[str, Any]] = []
    errors: list[str] = []
    seconds: list[float] = []

    def one(i: int) -> tuple[dict[str, Any], httpx.Response, float]:
        body = request_body(i, usable, max_tokens)
        t0 = time.perf_counter()
        with httpx.Client(timeout=300, headers={"Authorization": f"Bearer {key}"}) as http:
            resp = http.post(f"{base}/v1/chat/completions", json=body)
        return body, resp, time.perf_counter() - t0

    with ThreadPoolExecutor(concurrency) as pool:
        i = first
        while made < calls and len(errors) < calls:  # errors (cut short, too long) are not calls
            batch = list(pool.map(one, range(i, i + concurrency)))
            i += concurrency
            for body, resp, took in batch:
                seconds.append(took)
                if resp.status_code != 200:
                    errors.append(f"{resp.status_code}: {resp.text[:300]}")
                    continue
                choice = resp.json()["choices"][0]
                if choice["finish_reason"] == "length":
                    errors.append(f"{body['tools'][0]['function']['name']}: cut short by max_tokens {max_tokens}")
                    continue
                for call in choice["message"].get("tool_calls") or []:
                    made += 1
                    schema = next(t["function"]["parameters"] for t in body["tools"]
                                  if t["function"]["name"] == call["function"]["name"])
                    try:
                        jsonschema.validate(json.loads(call["function"]["arguments"]), schema,
                                            format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
                        valid += 1
                    except (ValueError, jsonschema.ValidationError) as exc:
                        failures.append({"tool": call["function"]["name"], "why": str(exc)[:200]})
            print(f"[tool-eval] {made} calls, {valid} valid, {len(errors)} errors", file=sys.stderr)
    seconds.sort()
    return {"calls": made, "valid": valid, "valid_rate": round(valid / made, 4) if made else None,
            "requests": len(seconds), "tools_offered": len(tools), "tools_refused": refused,
            "errors": len(errors), "error_samples": errors[:10], "invalid": failures,
            "seconds_per_request_p50": round(seconds[len(seconds) // 2], 2) if seconds else None,
            "first_request": first,
            "conditions": {"model": MODEL, "temperature": 1.0, "max_tokens": max_tokens, "concurrency": concurrency,
                           "source": "B3 tool specs in inspect-evals 0.28.0 (sha256-pinned wheel)"}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--max-tokens", type=int, default=300)
    p.add_argument("--concurrency", type=int, default=2, help="requests at once (the model has two instances)")
    p.add_argument("--first", type=int, default=0, help="first request number (the seed; to extend a run)")
    p.add_argument("--wheels", type=Path, default=CACHE / "safety-wheels")
    args = p.parse_args()
    settings = Settings.from_env()
    wheels = safety_data.fetch_wheels(args.wheels)
    key = (settings.home / "dev-api-key").read_text().strip()
    result = run(f"http://127.0.0.1:{settings.edge_port}", key, tool_specs(wheels["inspect-evals"]), args.calls,
                 args.max_tokens, args.concurrency, args.first)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
