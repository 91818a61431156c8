"""What each field of a chat completion request does here.

Every field of OpenAI's reference is in FIELDS. A field either takes effect, or is taken only with values that
ask for nothing the platform lacks (`n: 1`, `store: false`, `logprobs: false`: SDKs send them), and refused
otherwise with a 400 naming it, before any work is queued: a gateway that silently drops a parameter lets the
client believe it got what it asked for. The README's field table is generated from FIELDS
(`python -m edge.params`), and a unit test holds the two equal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from conflux import grammar
from edge.errors import ApiError
from edge.protocol import ChatCompletionRequest
from streams.tools import MAX_PARALLEL as MAX_PARALLEL_CALLS

MAX_STOP = 4  # OpenAI's limit
MAX_N = 8  # choices per request: each is a whole generation, so the bound keeps one request's cost in reach
LLAMA_CPP = "`smollm2-135m-instruct`, `qwen2.5-coder-0.5b-instruct` and `qwen2.5-coder-1.5b-instruct`"
LOGPROB_MODELS = f"supported for {LLAMA_CPP} (and `auto`, which then picks one)"
SAMPLING_MODELS = f"supported for {LLAMA_CPP} (and `auto` when it picks one); echo models do not sample"


@dataclass(frozen=True)
class FieldRule:
    support: str  # what the README says in its "here" column
    note: str
    refuse: Callable[[Any], str | None] | None = None  # why a value is refused, or None to take it


def only(*allowed: Any, why: str) -> Callable[[Any], str | None]:
    """Taken when unset or one of `allowed`; any other value is refused for `why`."""

    def check(value: Any) -> str | None:
        return None if value is None or value in allowed else why
    return check


def _stop(value: Any) -> str | None:
    stops = [value] if isinstance(value, str) else list(value or [])
    if len(stops) > MAX_STOP:
        return f"at most {MAX_STOP} stop sequences"
    if any(not s for s in stops):
        return "a stop sequence cannot be empty"
    return None


def _n(value: Any) -> str | None:
    return f"at most {MAX_N} choices per request" if value is not None and value > MAX_N else None


def _metadata(value: Any) -> str | None:
    if value and any(len(k) > 64 or len(v) > 512 for k, v in value.items()):
        return "keys are at most 64 characters and values at most 512"
    return None


def _stream_options(value: Any) -> str | None:
    return "include_obfuscation is not supported" if value and value.include_obfuscation else None


NO_TOOLS = "the deprecated functions API is not supported; use tools"
GUIDED = f"supported for {LLAMA_CPP} (and `auto`, which then picks one)"
FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def _tools(value: Any) -> str | None:
    names = set()
    for i, t in enumerate(value or []):
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(t.get("function"), dict):
            return f"[{i}]: only tools of type function are supported"
        f = t["function"]
        unknown = sorted(set(f) - {"name", "description", "parameters", "strict"})
        if unknown:
            return f"[{i}].function.{unknown[0]}: unknown field"
        if not isinstance(f.get("name"), str) or not FUNCTION_NAME.match(f["name"]):
            return f"[{i}].function.name: 1-64 letters, digits, _ or -"
        if f["name"] in names:
            return f"[{i}].function.name: {f['name']} is defined twice"
        names.add(f["name"])
        if f.get("parameters") is not None:
            try:
                grammar.check_schema(f["parameters"], f"[{i}].function.parameters")
            except grammar.SchemaError as exc:
                return str(exc)
    return None


def _server_tools(value: Any) -> str | None:
    from streams.server_tools import TOOLS

    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        return "a list of built-in tool names"
    unknown = sorted(set(value) - set(TOOLS))
    if unknown:
        return f"no built-in tool named {unknown[0]!r} (there are {', '.join(sorted(TOOLS))})"
    if len(set(value)) != len(value):
        return "each tool once"
    return None


def _response_format(value: Any) -> str | None:
    if value is None or value == {"type": "text"} or value == {"type": "json_object"}:
        return None
    if not isinstance(value, dict) or value.get("type") != "json_schema":
        return "type must be text, json_object or json_schema"
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not FUNCTION_NAME.match(spec["name"]):
        return "json_schema needs a name (1-64 letters, digits, _ or -)"
    unknown = sorted(set(spec) - {"name", "description", "schema", "strict"})
    if unknown:
        return f"json_schema.{unknown[0]}: unknown field"
    try:
        grammar.check_schema(spec.get("schema") or {"type": "object"}, "json_schema.schema")
    except grammar.SchemaError as exc:
        return str(exc)
    return None
FIELDS: dict[str, FieldRule] = {
    "model": FieldRule("supported", "a model of `GET /v1/models`, or `auto` (the routing stage picks)"),
    "messages": FieldRule("supported", "roles system, developer, user, assistant; text content (parts of type "
                          "`text`); other content parts and tool calls in messages are refused"),
    "stream": FieldRule("supported", "server-sent events, as OpenAI streams them"),
    "stream_options": FieldRule("supported", "`include_usage`; `include_obfuscation: true` refused",
                                _stream_options),
    "max_completion_tokens": FieldRule("supported", "above the plan's or the model's output cap: 400"),
    "max_tokens": FieldRule("supported", "as `max_completion_tokens` (deprecated by OpenAI)"),
    "temperature": FieldRule(SAMPLING_MODELS, "omitted means 1, OpenAI's default"),
    "top_p": FieldRule(SAMPLING_MODELS, "omitted means 1"),
    "presence_penalty": FieldRule(SAMPLING_MODELS, "-2 to 2"),
    "frequency_penalty": FieldRule(SAMPLING_MODELS, "-2 to 2"),
    "seed": FieldRule(SAMPLING_MODELS, "same seed, prompt and parameters: same answer (llama.cpp's seed is "
                      "32-bit: the seed is taken modulo 2^32)"),
    "stop": FieldRule("supported", f"up to {MAX_STOP} sequences, applied by the worker for every model; the "
                      "answer ends before the first, which is not returned", _stop),
    "user": FieldRule("supported", "recorded on `chat.requests`"),
    "safety_identifier": FieldRule("supported", "recorded on `chat.requests` as the user when `user` is unset"),
    "metadata": FieldRule("supported", "up to 16 pairs, recorded on `chat.requests`", _metadata),
    "n": FieldRule("supported", f"1 to {MAX_N} choices, each its own generation and events (`choice` on "
                   "`chat.requests` and `token_chunk`); with a `seed` s, choice i samples with s + i; only the "
                   "first choice enters session memory; usage counts the prompt once", _n),
    "logprobs": FieldRule(LOGPROB_MODELS, "each content token's log-probability under the model's own "
                          "distribution (before temperature, penalties and grammar); tool-call arguments carry none"),
    "top_logprobs": FieldRule(LOGPROB_MODELS, "0 to 20 alternatives per token; needs `logprobs: true`"),
    "store": FieldRule("refused unless false", "stored completions are not kept (the events are)",
                       only(False, why="stored completions are not kept; the request's events are on Kafka")),
    "service_tier": FieldRule("refused unless auto or default", "the tenant's plan decides",
                              only("auto", "default", why="the tenant's plan decides the tier")),
    "modalities": FieldRule("refused unless [\"text\"]", "text only", only(["text"], why="text output only")),
    "response_format": FieldRule(GUIDED, "`text`, `json_object`, `json_schema` (`strict` or not): decoding is "
                                 "constrained by a grammar from the schema and the answer checked against it (keywords "
                                 "of OpenAI's strict mode; others are refused)", _response_format),
    "tools": FieldRule(GUIDED, "functions; arguments are decoded under a grammar from each function's `parameters` "
                       "and checked against it (keywords of OpenAI's strict mode; others are refused)", _tools),
    "tool_choice": FieldRule(GUIDED, "`none`, `auto`, `required`, or a named function"),
    "parallel_tool_calls": FieldRule(GUIDED, f"true (default): up to {MAX_PARALLEL_CALLS} calls in one answer"),
    "server_tools": FieldRule(GUIDED, "Conflux's extension: built-in tools the worker runs itself (`search_knowledge`, "
                              "`calculator`, `metrics_query`, `fetch_url`); each step streams as an SSE comment line "
                              "`: conflux.tool_step {...}`; a client tool of the same name stays the client's",
                              _server_tools),
    "functions": FieldRule("refused unless []", NO_TOOLS, only([], why=NO_TOOLS)),
    "function_call": FieldRule("refused unless none or auto", NO_TOOLS, only("none", "auto", why=NO_TOOLS)),
    "logit_bias": FieldRule("refused unless {}", "token biases are not applied",
                            only({}, why="token biases are not applied")),
    "prediction": FieldRule("refused", "predicted outputs are not used", only(why="predicted outputs are not used")),
    "audio": FieldRule("refused", "text only", only(why="audio output is not available")),
    "reasoning_effort": FieldRule("refused", "no reasoning models", only(why="no model here reasons")),
    "verbosity": FieldRule("refused unless medium", "the default verbosity only",
                           only("medium", why="the models' verbosity cannot be set")),
    "web_search_options": FieldRule("refused", "no web search", only(why="web search is not available")),
    "prompt_cache_key": FieldRule("refused", "no prompt cache", only(why="there is no prompt cache")),
    "prompt_cache_retention": FieldRule("refused", "no prompt cache", only(why="there is no prompt cache")),
}


def refuse_unsupported(req: ChatCompletionRequest) -> None:
    """ApiError(400) naming the first field whose value asks for something the platform does not do."""
    for name, rule in FIELDS.items():
        if rule.refuse is not None and (why := rule.refuse(getattr(req, name))):
            raise ApiError(400, f"{name}: {why}", param=name, code="unsupported_parameter")
    _check_tool_choice(req)
    if req.top_logprobs is not None and not req.logprobs:
        raise ApiError(400, "top_logprobs: needs logprobs: true", param="top_logprobs", code="invalid_value")
    if (req.tools or req.server_tools) and req.tool_choice != "none" and req.response_format \
            and req.response_format["type"] != "text":
        raise ApiError(400, "response_format: a JSON answer together with tools is not supported yet; send one",
                       param="response_format", code="unsupported_parameter")
    for i, m in enumerate(req.messages):
        if isinstance(m.content, list):
            kinds = sorted({str(p.get("type")) for p in m.content} - {"text"})
            if kinds:
                raise ApiError(400, f"messages[{i}].content: only text parts are read; got {', '.join(kinds)}",
                               param=f"messages[{i}].content", code="unsupported_parameter")
        for field in ("function_call", "audio"):
            if getattr(m, field):
                raise ApiError(400, f"messages[{i}].{field}: {NO_TOOLS if field != 'audio' else 'text only'}",
                               param=f"messages[{i}].{field}", code="unsupported_parameter")
        if m.role == "tool" and not m.tool_call_id:
            raise ApiError(400, f"messages[{i}].tool_call_id: a tool message answers a call; give its id",
                           param=f"messages[{i}].tool_call_id", code="invalid_value")
        for j, call in enumerate(m.tool_calls or []):
            f = call.get("function") if isinstance(call, dict) else None
            if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not _is_json(f.get("arguments")):
                raise ApiError(400, f"messages[{i}].tool_calls[{j}]: needs function.name and function.arguments "
                               "(JSON text)", param=f"messages[{i}].tool_calls", code="invalid_value")


def with_tenant_tools(req: ChatCompletionRequest, defaults: tuple[str, ...],
                      can_guide: Callable[[str], bool]) -> ChatCompletionRequest:
    """The request with the tenant's default built-in tools (`conflux tenants set-tools --default-tools`), when it
    names none itself (`"server_tools": []` opts out) and nothing in it rules tools out. A default never turns a
    request the platform accepts into one it refuses: with `tool_choice: none`, a JSON answer, a named model
    that cannot constrain its output, or any other field that does not go with tools, the request runs as sent."""
    if not defaults or req.server_tools is not None or req.tool_choice == "none" or not can_guide(req.model):
        return req
    with_tools = req.model_copy(update={"server_tools": list(defaults)})
    try:
        refuse_unsupported(with_tools)
    except ApiError:
        return req
    return with_tools


def _is_json(text: Any) -> bool:
    try:
        json.loads(text if isinstance(text, str) else "x")
        return True
    except ValueError:
        return False


def _check_tool_choice(req: ChatCompletionRequest) -> None:
    choice = req.tool_choice
    if choice is None or choice in ("none", "auto", "required"):
        if choice == "required" and not req.tools and not req.server_tools:
            raise ApiError(400, "tool_choice: required needs tools", param="tool_choice", code="invalid_value")
        return
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or choice.get("type") != "function" or not name:
        raise ApiError(400, "tool_choice: none, auto, required or {\"type\": \"function\", \"function\": "
                       "{\"name\": ...}}", param="tool_choice", code="invalid_value")
    if name not in {t["function"]["name"] for t in req.tools or []}:
        raise ApiError(400, f"tool_choice: no tool named {name!r}", param="tool_choice", code="invalid_value")


def logprobs_asked(req: ChatCompletionRequest) -> int | None:
    """None when logprobs are not asked for; else how many alternatives per token."""
    return (req.top_logprobs or 0) if req.logprobs else None


def needs_grammar(req: ChatCompletionRequest) -> str | None:
    """The field that makes this request's output constrained (only some models can serve it), or None."""
    if req.tools and req.tool_choice != "none":
        return "tools"
    if req.server_tools and req.tool_choice != "none":
        return "server_tools"
    if req.response_format and req.response_format.get("type") in ("json_object", "json_schema"):
        return "response_format"
    return None


def table() -> str:
    """The README's field table."""
    rows = ["| field | here | notes |", "|---|---|---|"]
    rows += [f"| `{name}` | {rule.support} | {rule.note} |" for name, rule in FIELDS.items()]
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
