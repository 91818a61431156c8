"""Tool calls and structured output in the chain: what the model is told, the grammar its output follows, and
the check of what it produced.

The request (chat.requests) carries OpenAI's `tools`, `tool_choice` and `response_format` as JSON. `plan` turns
them into a Guide: the grammar for Triton (conflux/grammar.py) and what to check afterwards. A tool call is a
JSON array `[{"name": ..., "arguments": {...}}]`; with `tool_choice: auto` the model may instead answer in
text, and the grammar makes the two distinguishable from the first character (a call starts with TOOL_TAG,
text never starts with "<"). A named `tool_choice` generates the arguments object alone.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from conflux import grammar
from conflux.errors import ConfluxError
from model_runtime.gbnf import to_gbnf

TOOL_TAG = "<tool_call>"
MAX_PARALLEL = 4  # calls in one answer when parallel_tool_calls is on
MAX_ATTEMPTS = 3  # generations of a constrained output before the request fails with an explicit error
NO_PARAMETERS = {"type": "object", "properties": {}, "additionalProperties": False}


@dataclass(frozen=True)
class Function:
    name: str
    description: str
    parameters: dict[str, Any]


class ConstraintError(ConfluxError):
    """A constrained output failed its check in every attempt."""


@dataclass(frozen=True)
class Call:
    id: str
    name: str
    arguments: str  # JSON text
    attempts: int = 1  # generations it took


@dataclass(frozen=True)
class Guide:
    kind: str  # "json": response_format | "tools"
    guide_type: str  # Triton's guided_decoding_guide_type: json_schema | gbnf
    guide: str
    instructions: str  # added to the system prompt: what the model is to produce
    schema: dict[str, Any] | None = None  # kind json: what the answer must validate against
    functions: dict[str, Function] = field(default_factory=dict)
    choice: str = "auto"  # auto | required | a function's name
    server: frozenset[str] = frozenset()  # the offered functions the worker runs itself (streams/server_tools)
    # The grammar alone holds every schema (conflux/grammar.held_by_grammar): the output leaves as it is
    # generated. Otherwise it is generated whole and checked first, and generated again if it fails.
    streamed: bool = False


@dataclass(frozen=True)
class Outcome:
    text: str | None  # a text (or JSON) answer
    calls: list[Call]
    problem: str | None  # why the output failed its check (None: it passed)


def functions_of(request: dict[str, Any]) -> dict[str, Function]:
    tools = json.loads(request.get("tools") or "[]")
    out = {}
    for t in tools:
        f = t["function"]
        out[f["name"]] = Function(f["name"], f.get("description") or "", f.get("parameters") or NO_PARAMETERS)
    return out


def server_functions_of(request: dict[str, Any]) -> dict[str, Function]:
    """The built-in tools the request asks the worker to run, as functions; a client function of the same name
    stays the client's (README, server-side tools)."""
    raw = request.get("server_tools")
    if not raw:  # nearly every chat: nothing to parse
        return {}
    from streams.server_tools import TOOLS

    client = functions_of(request)
    return {n: Function(n, TOOLS[n].description, TOOLS[n].parameters)
            for n in json.loads(raw) if n in TOOLS and n not in client}


def choice_of(request: dict[str, Any]) -> str:
    raw = request.get("tool_choice")
    if not raw:
        return "auto"
    value = json.loads(raw)
    return value if isinstance(value, str) else str(value["function"]["name"])


def _envelope(f: Function) -> dict[str, Any]:
    return {"type": "object", "properties": {"name": {"const": f.name}, "arguments": f.parameters},
            "required": ["name", "arguments"], "additionalProperties": False}


def calls_schema(functions: dict[str, Function], parallel: bool) -> dict[str, Any]:
    envelopes = [_envelope(f) for f in functions.values()]
    items = envelopes[0] if len(envelopes) == 1 else {"anyOf": envelopes}
    return {"type": "array", "items": items, "minItems": 1, "maxItems": MAX_PARALLEL if parallel else 1}


def plan(request: dict[str, Any], with_server: bool = True, choice: str | None = None) -> Guide | None:
    """How this request's output is constrained, or None when it is free text. `with_server` False leaves the
    built-in tools out (the agent loop's last step, which must answer); `choice` overrides the request's
    tool_choice (the agent loop's later steps are `auto`)."""
    server = server_functions_of(request) if with_server else {}
    functions = {**functions_of(request), **server}
    choice = choice or choice_of(request)
    if functions and choice != "none":
        listing = "\n".join(json.dumps({"name": f.name, "description": f.description, "parameters": f.parameters})
                            for f in functions.values())
        if choice not in ("auto", "required"):
            f = functions[choice]
            return Guide("tools", "json_schema", json.dumps(f.parameters), f"Call the function {f.name}: answer "
                         f"with its arguments as a JSON object.\nFunction:\n{listing}", functions=functions,
                         choice=choice, streamed=grammar.held_by_grammar(f.parameters))
        # With built-in tools on offer nothing streams before the output is known: a call to one of them runs
        # here and must never reach the client as a tool-call delta.
        held = not server and all(grammar.held_by_grammar(f.parameters) for f in functions.values())
        calls = to_gbnf(json.dumps(calls_schema(functions, bool(request.get("parallel_tool_calls", True)))),
                                root="calls")
        how = (f"To call functions, answer with {TOOL_TAG} followed by a JSON array of calls, "
               '[{"name": ..., "arguments": {...}}].')
        if choice == "required":
            gbnf = calls + f'\nroot ::= "{TOOL_TAG}" calls'
            return Guide("tools", "gbnf", gbnf, f"You must call a function. {how}\nFunctions:\n{listing}",
                         functions=functions, choice=choice, streamed=held, server=frozenset(server))
        # auto: a call, or text that does not start with "<" (so the first character tells them apart)
        gbnf = calls + f'\nroot ::= "{TOOL_TAG}" calls | text\ntext ::= ([^<] [^\\x00]*)?'
        return Guide("tools", "gbnf", gbnf, f"You may call functions. {how} Otherwise answer in text.\n"
                     f"Functions:\n{listing}", functions=functions, choice=choice, streamed=held,
                     server=frozenset(server))
    fmt = json.loads(request.get("response_format") or "null")
    if fmt and fmt.get("type") in ("json_object", "json_schema"):
        schema = fmt["json_schema"].get("schema") or {"type": "object"} if fmt["type"] == "json_schema" \
            else {"type": "object"}
        return Guide("json", "json_schema", json.dumps(schema), "Answer with JSON only, matching this JSON "
                     f"Schema:\n{json.dumps(schema)}", schema=schema, streamed=grammar.held_by_grammar(schema))
    return None


def check(guide: Guide, text: str) -> Outcome:
    """The output of a constrained generation, parsed and checked against its schemas."""
    if guide.kind == "json":
        assert guide.schema is not None
        return Outcome(text, [], grammar.validate(guide.schema, text))
    if guide.choice not in ("auto", "required"):
        f = guide.functions[guide.choice]
        problem = grammar.validate(f.parameters, text)
        return Outcome(None, [_call(f.name, text if problem else json.dumps(json.loads(text)))], problem)
    if not text.startswith(TOOL_TAG):
        if guide.choice == "required":
            return Outcome(None, [], f"expected {TOOL_TAG}")
        return Outcome(text, [], None)
    body = text[len(TOOL_TAG):]
    problem = grammar.validate(calls_schema(guide.functions, True), body)
    if problem:
        return Outcome(None, [], problem)
    calls = [_call(c["name"], json.dumps(c["arguments"])) for c in json.loads(body)]
    for c in calls:  # the envelope schema already checked each one; this names the call that failed
        if why := grammar.validate(guide.functions[c.name].parameters, c.arguments):
            return Outcome(None, calls, f"{c.name}: {why}")
    return Outcome(None, calls, None)


def partial_calls(guide: Guide, text: str) -> list[Call]:
    """What a generation cut short by the token limit holds of its calls (finish_reason length): the text as
    it stands, as the arguments of one call (OpenAI's answer is incomplete in the same way)."""
    if guide.choice not in ("auto", "required"):
        return [_call(guide.choice, text)]
    return [_call(next(iter(guide.functions)), text[len(TOOL_TAG):])] if text.startswith(TOOL_TAG) else []


ARGUMENT_FRAGMENT = 48  # characters of arguments per streamed delta


def deltas(calls: list[Call]) -> list[dict[str, Any]]:
    """token_chunk tool-call deltas, as OpenAI streams a call: id and name first, then its arguments in
    fragments."""
    out: list[dict[str, Any]] = []
    for i, c in enumerate(calls):
        out.append({"index": i, "id": c.id, "name": c.name, "arguments": ""})
        out += [{"index": i, "id": None, "name": None, "arguments": c.arguments[j:j + ARGUMENT_FRAGMENT]}
                for j in range(0, len(c.arguments), ARGUMENT_FRAGMENT)]
    return out


ENVELOPE = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')


class CallStream:
    """Tool-call deltas of a streamed constrained output (Guide.streamed), as it is generated: a call's id and
    name once its envelope names the function, then its arguments as they come. Under `auto` the model may
    answer in text instead: `text_mode` then says so (the first character tells, as the grammar has it)."""

    def __init__(self, guide: Guide) -> None:
        named = guide.choice not in ("auto", "required")
        self._state = "args" if named else "tag"  # tag | between | envelope | args | after | done
        self._buf = ""
        self._depth, self._in_string, self._escaped = 0, False, False
        self._calls: list[list[str]] = []  # [id, name, arguments]
        self._out: list[dict[str, Any]] = []
        self.text_mode = False
        if named:
            self._start(guide.choice)

    def _start(self, name: str) -> None:
        call_id = _call(name, "").id
        self._calls.append([call_id, name, ""])
        self._out.append({"index": len(self._calls) - 1, "id": call_id, "name": name, "arguments": ""})
        self._depth, self._in_string, self._escaped = 0, False, False

    def feed(self, text: str) -> list[dict[str, Any]]:
        """The deltas this text completes (none in text mode)."""
        self._buf += text
        while self._step():
            pass
        out, self._out = self._out, []
        return out

    def _step(self) -> bool:
        """Consumes what it can of the buffer; False when it needs more text."""
        buf = self._buf
        if self._state == "tag":
            if buf.startswith(TOOL_TAG):
                self._buf, self._state = buf[len(TOOL_TAG):], "between"
                return True
            self.text_mode = bool(buf) and not TOOL_TAG.startswith(buf)
            return False
        if self._state == "between":
            rest = buf.lstrip(" \t\n[,")
            self._buf = rest
            if rest.startswith("]"):
                self._state = "done"
            elif rest.startswith("{"):
                self._state = "envelope"
                return True
            return False
        if self._state == "envelope":
            m = ENVELOPE.match(buf)
            if m is None:
                return False
            self._start(json.loads(f'"{m.group(1)}"'))
            self._buf, self._state = buf[m.end():], "args"
            return True
        if self._state == "args":
            return self._arguments()
        if self._state == "after":
            rest = buf.lstrip(" \t\n")
            self._buf = rest[1:] if rest.startswith("}") else rest
            if rest.startswith("}"):
                self._state = "between"
                return True
        return False

    def _arguments(self) -> bool:
        """The arguments value, character by character until it closes (depth back to 0)."""
        taken: list[str] = []
        for i, c in enumerate(self._buf):
            if self._depth == 0 and not taken and c in " \t\n":
                continue  # space before the value
            taken.append(c)
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif c == "\\":
                    self._escaped = True
                elif c == '"':
                    self._in_string = False
            elif c == '"':
                self._in_string = True
            elif c in "{[":
                self._depth += 1
            elif c in "}]":
                self._depth -= 1
                if self._depth == 0:
                    self._emit("".join(taken))
                    self._buf = self._buf[i + 1:]
                    self._state = "after"
                    return True
        self._buf = ""
        self._emit("".join(taken))
        return False

    def _emit(self, fragment: str) -> None:
        if fragment:
            self._calls[-1][2] += fragment
            self._out.append({"index": len(self._calls) - 1, "id": None, "name": None, "arguments": fragment})

    def take_text(self) -> str:
        """In text mode: the text held so far (the pieces after it are text too)."""
        text, self._buf = self._buf, ""
        return text

    def calls(self) -> list[Call]:
        """The calls as streamed (arguments as the model spelled them, which is what the client assembled)."""
        return [Call(call_id, name, arguments) for call_id, name, arguments in self._calls]


def _call(name: str, arguments: str) -> Call:
    return Call("call_" + secrets.token_hex(12), name, arguments)


def render_message(m: dict[str, Any]) -> tuple[str, str]:
    """(role, content) of a conversation message for the prompt: an assistant's tool calls in the form the
    model is asked to produce, a tool's result as a `tool` turn."""
    content = m.get("content") or ""
    if m["role"] == "assistant" and m.get("tool_calls"):
        content += said_calls([(c["function"]["name"], c["function"].get("arguments") or "{}")
                               for c in json.loads(m["tool_calls"])])
    if m["role"] == "tool" and m.get("tool_call_id"):
        content = result_text(m["tool_call_id"], content)
    return m["role"], content


def said_calls(calls: list[tuple[str, str]]) -> str:
    """(name, JSON arguments) pairs as the model is asked to write its calls, for a prompt's assistant turn."""
    return TOOL_TAG + json.dumps([{"name": name, "arguments": json.loads(args)} for name, args in calls])


def result_text(call_id: str, content: str) -> str:
    """A tool's result as a prompt's `tool` turn shows it: which call it answers, then what it returned."""
    return f"[result of {call_id}] {content}"


def new_results(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tool results this request brings: the tool messages after the last assistant turn."""
    out: list[dict[str, Any]] = []
    for m in reversed(messages):
        if m["role"] == "assistant":
            break
        if m["role"] == "tool":
            out.insert(0, m)
    return out
