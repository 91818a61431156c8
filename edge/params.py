"""What each field of a chat completion request does here.

Every field of OpenAI's reference is in FIELDS. A field either takes effect, or is taken only with values that
ask for nothing the platform lacks (`n: 1`, `store: false`, `logprobs: false`: SDKs send them), and refused
otherwise with a 400 naming it, before any work is queued: a gateway that silently drops a parameter lets the
client believe it got what it asked for. The README's field table is generated from FIELDS
(`python -m edge.params`), and a unit test holds the two equal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge.errors import ApiError
from edge.protocol import ChatCompletionRequest

MAX_STOP = 4  # OpenAI's limit
SAMPLING_MODELS = "supported for `smollm2-135m-instruct` (and `auto` when it picks it); echo models do not sample"


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


def _metadata(value: Any) -> str | None:
    if value and any(len(k) > 64 or len(v) > 512 for k, v in value.items()):
        return "keys are at most 64 characters and values at most 512"
    return None


def _stream_options(value: Any) -> str | None:
    return "include_obfuscation is not supported" if value and value.include_obfuscation else None


NO_TOOLS = "tool calling is not available yet"
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
    "n": FieldRule("refused unless 1", "one choice per request", only(1, why="only one choice (n: 1) per request")),
    "logprobs": FieldRule("refused unless false", "log probabilities are not returned",
                          only(False, why="log probabilities are not returned")),
    "top_logprobs": FieldRule("refused", "needs `logprobs`", only(why="log probabilities are not returned")),
    "store": FieldRule("refused unless false", "stored completions are not kept (the events are)",
                       only(False, why="stored completions are not kept; the request's events are on Kafka")),
    "service_tier": FieldRule("refused unless auto or default", "the tenant's plan decides",
                              only("auto", "default", why="the tenant's plan decides the tier")),
    "modalities": FieldRule("refused unless [\"text\"]", "text only", only(["text"], why="text output only")),
    "response_format": FieldRule("refused unless {\"type\": \"text\"}", "structured output is not available yet",
                                 only({"type": "text"}, why="structured output (json_object, json_schema) is not "
                                      "available yet")),
    "tools": FieldRule("refused unless []", NO_TOOLS, only([], why=NO_TOOLS)),
    "tool_choice": FieldRule("refused unless none or auto", NO_TOOLS, only("none", "auto", why=NO_TOOLS)),
    "parallel_tool_calls": FieldRule("taken, no effect without tools", "there are no tools to call yet"),
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
    for i, m in enumerate(req.messages):
        if isinstance(m.content, list):
            kinds = sorted({str(p.get("type")) for p in m.content} - {"text"})
            if kinds:
                raise ApiError(400, f"messages[{i}].content: only text parts are read; got {', '.join(kinds)}",
                               param=f"messages[{i}].content", code="unsupported_parameter")
        for field in ("tool_calls", "function_call", "audio"):
            if getattr(m, field):
                raise ApiError(400, f"messages[{i}].{field}: {NO_TOOLS if field != 'audio' else 'text only'}",
                               param=f"messages[{i}].{field}", code="unsupported_parameter")
        if m.role == "tool":
            raise ApiError(400, f"messages[{i}].role: {NO_TOOLS}", param=f"messages[{i}].role",
                           code="unsupported_parameter")


def table() -> str:
    """The README's field table."""
    rows = ["| field | here | notes |", "|---|---|---|"]
    rows += [f"| `{name}` | {rule.support} | {rule.note} |" for name, rule in FIELDS.items()]
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
