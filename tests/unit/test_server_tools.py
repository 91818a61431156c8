"""The built-in server-side tools without engines: the calculator's evaluator, argument checking, time limits
and failures turned into results, and fetch_url's guards (allow-list, addresses, redirects, size) against a
local HTTP server reached through an explicit test policy."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.server_tools import TOOLS, Tool, ToolContext, ToolError, run_tool
from streams.server_tools.calculator import evaluate
from streams.server_tools.fetch_url import FetchPolicy, fetch, is_public, on_list

CTX = ToolContext(tenant_id="t1")


@pytest.mark.parametrize(("expr", "value"), [("2+3*4", 14), ("2^10", 1024), ("(1+2)*(3+4)/7", 3.0),
                                             ("log(8, 2)", 3.0), ("factorial(5)", 120), ("-3**2", -9),
                                             ("max(1, 7, 3) % 4", 3), ("round(pi, 2)", 3.14)])
def test_calculator_values(expr: str, value: float) -> None:
    assert evaluate(expr) == value


@pytest.mark.parametrize(("expr", "why"), [("9**9**9", "too large"), ("__import__('os')", "not allowed"),
                                           ("().__class__", "not allowed"), ("x + 1", "not allowed"),
                                           ("1/0", "division by zero"), ("1e308*10", "finite"),
                                           ("factorial(1000)", "factorial"), ("[1, 2]", "not allowed"),
                                           ("True + 1", "not allowed"), ("1 +", "not an arithmetic"),
                                           ("1+" * 300 + "1", "longer than")])
def test_calculator_refuses_with_a_reason(expr: str, why: str) -> None:
    with pytest.raises(ToolError, match=why):
        evaluate(expr)


@given(st.integers(-10**6, 10**6), st.integers(-10**6, 10**6), st.sampled_from(["+", "-", "*", "//", "%"]))
def test_calculator_agrees_with_python_on_integers(a: int, b: int, op: str) -> None:
    if op in ("//", "%") and b == 0:
        return
    assert evaluate(f"({a}) {op} ({b})") == eval(f"({a}) {op} ({b})")


async def test_bad_arguments_come_back_as_an_error_result() -> None:
    calc = TOOLS["calculator"]
    cases: list[tuple[str | dict[str, Any], str]] = [
        ("{", "not JSON"), ("[]", "JSON object"), ({"expr": "1"}, "expression"),
        ({"expression": "1", "extra": 2}, "Additional properties")]
    for raw, why in cases:
        out = await run_tool(calc, CTX, raw)
        assert not out.ok and out.error_kind == "bad_arguments" and why in out.content, out
    out = await run_tool(calc, CTX, '{"expression": "6*7"}')
    assert out.ok and '"value": 42' in out.content


async def test_a_failing_slow_or_broken_tool_is_a_result_never_an_exception() -> None:
    async def slow(_ctx: ToolContext, _args: dict[str, Any]) -> Any:
        await asyncio.sleep(5)

    async def broken(_ctx: ToolContext, _args: dict[str, Any]) -> Any:
        raise KeyError("bug")

    schema = {"type": "object", "properties": {}, "additionalProperties": False}
    out = await run_tool(Tool("slow", "", schema, slow, timeout_s=0.05), CTX, {})
    assert not out.ok and out.error_kind == "timeout"
    out = await run_tool(Tool("broken", "", schema, broken), CTX, {})
    assert not out.ok and out.error_kind == "internal" and "bug" not in out.content  # no internals to the model
    out = await run_tool(TOOLS["fetch_url"], CTX, {"url": "https://example.com/"})
    assert not out.ok and "allows no hosts" in out.content


def test_every_tool_schema_is_one_constrained_decoding_accepts() -> None:
    from conflux import grammar

    for tool in TOOLS.values():
        grammar.check_schema(tool.parameters, f"{tool.name}.parameters")
        assert tool.openai()["function"]["name"] == tool.name


@pytest.mark.parametrize(("address", "public"), [("93.184.216.34", True), ("2606:4700::1111", True),
                                                 ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False),
                                                 ("192.168.1.1", False), ("169.254.169.254", False),
                                                 ("0.0.0.0", False), ("224.0.0.1", False), ("::1", False),
                                                 ("fe80::1", False), ("fd00::1", False),
                                                 ("::ffff:127.0.0.1", False), ("100.64.0.1", False)])
def test_only_public_addresses_are_fetched(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


def test_the_allow_list_matches_hosts_and_subdomains_exactly() -> None:
    allow = ("docs.example.com", ".example.org")
    assert on_list("docs.example.com", allow) and on_list("DOCS.example.com.", allow)
    assert on_list("a.example.org", allow) and on_list("example.org", allow)
    assert not on_list("evil-docs.example.com", allow) and not on_list("example.org.evil.net", allow)
    assert not on_list("badexample.org", allow)


async def test_default_policy_refuses_private_targets_even_when_listed() -> None:
    with pytest.raises(ToolError, match="not public"):
        await fetch("http://169.254.169.254/latest/meta-data/", ("169.254.169.254",))

    async def rebinding(_host: str, _port: int) -> list[str]:
        return ["93.184.216.34", "127.0.0.1"]  # one private answer among public ones is enough to refuse

    with pytest.raises(ToolError, match="not public"):
        await fetch("https://docs.example.com/", ("docs.example.com",), FetchPolicy(resolve=rebinding))
    for url, why in [("ftp://docs.example.com/x", "only http"), ("https://docs.example.com:8443/", "default port"),
                     ("https://user:pw@docs.example.com/", "credentials"), ("https://other.com/", "allow-list")]:
        with pytest.raises(ToolError, match=why):
            await fetch(url, ("docs.example.com",))


class _Site(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        host = self.headers["Host"]
        if self.path == "/page":
            body = b"<html><head><script>steal()</script><style>p{}</style></head><body><p>Hello</p>" \
                   b"<p>from " + host.encode() + b"</p></body></html>"
            self._send(200, "text/html; charset=utf-8", body)
        elif self.path == "/big":
            self._send(200, "text/plain", b"x" * 300_000)
        elif self.path == "/binary":
            self._send(200, "application/octet-stream", b"\x00\x01")
        elif self.path == "/hop":
            self._redirect("/page")
        elif self.path == "/away":
            self._redirect("http://evil.test/steal")
        elif self.path == "/loop":
            self._redirect("/loop")
        else:
            self._send(404, "text/plain", b"no")

    def _send(self, status: int, kind: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def site() -> Iterator[FetchPolicy]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Site)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    async def local(_host: str, _port: int) -> list[str]:
        return ["127.0.0.1"]

    # The one thing the test policy changes: this loopback server counts as reachable, on its own port.
    yield FetchPolicy(allowed_address=lambda ip: ip.is_loopback, resolve=local,
                      ports={"http": server.server_address[1], "https": 443})
    server.shutdown()


async def test_fetches_visible_text_with_the_host_name_it_was_asked_for(site: FetchPolicy) -> None:
    got = await fetch("http://docs.example.com/page", ("docs.example.com",), site)
    assert got["text"] == "Hello\nfrom docs.example.com" and not got["truncated"]
    hop = await fetch("http://docs.example.com/hop", ("docs.example.com",), site)
    assert hop["url"] == "http://docs.example.com/page" and hop["text"].startswith("Hello")


async def test_redirects_off_the_list_sizes_and_kinds_are_bounded(site: FetchPolicy) -> None:
    allow = ("docs.example.com",)
    with pytest.raises(ToolError, match=r"evil\.test is not on"):
        await fetch("http://docs.example.com/away", allow, site)
    with pytest.raises(ToolError, match="redirects"):
        await fetch("http://docs.example.com/loop", allow, site)
    with pytest.raises(ToolError, match="not text"):
        await fetch("http://docs.example.com/binary", allow, site)
    big = await fetch("http://docs.example.com/big", allow, site)
    assert big["truncated"] and len(big["text"]) == site.max_bytes
