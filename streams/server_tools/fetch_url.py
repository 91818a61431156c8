"""fetch_url: a web page or API response the tenant allows, as text. A model's URL is untrusted input, so:

- the host must be on the tenant's allow-list (`docs.example.com`, or `.example.com` for its subdomains);
- the name is resolved here and every address it resolves to must be public: no private, loopback,
  link-local (cloud metadata at 169.254.169.254), multicast, reserved or unspecified address, IPv4-mapped
  forms included; the connection then goes to the address that was checked (no second lookup that a
  rebinding DNS server could answer differently), with TLS still verified against the host name;
- redirects are followed by hand, each one checked like the first (a redirect off the list is refused);
- only http(s) on the scheme's default port; text only; at most `max_bytes` read and `timeout_s` spent.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

from streams.server_tools.base import Tool, ToolContext, ToolError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
TEXT_TYPES = ("text/", "application/json", "application/xml", "application/xhtml+xml", "application/ld+json")
PORTS = {"http": 80, "https": 443}
HIDDEN = ("script", "style", "noscript")
MAX_URL = 2048


def is_public(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
                                 or ip.is_reserved or ip.is_unspecified)


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int = 256 * 1024
    timeout_s: float = 8.0
    max_redirects: int = 3
    allowed_address: Callable[[IPAddress], bool] = is_public  # tests allow 127.0.0.1 explicitly
    resolve: Callable[[str, int], Any] | None = None  # async (host, port) -> [ip, ...]; None: the system's DNS
    ports: dict[str, int] = field(default_factory=lambda: dict(PORTS))  # where each scheme connects (tests: theirs)
    user_agent: str = field(default="conflux-fetch_url/1")


def on_list(host: str, allow: tuple[str, ...]) -> bool:
    host = host.lower().rstrip(".")
    for entry in (a.lower().rstrip(".") for a in allow):
        if entry.startswith(".") and (host.endswith(entry) or host == entry[1:]):
            return True
        if host == entry:
            return True
    return False


async def _addresses(policy: FetchPolicy, host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]  # a literal address: no lookup
    except ValueError:
        pass
    if policy.resolve is not None:
        found = await policy.resolve(host, port)
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise ToolError(f"cannot resolve {host}: {exc.strerror}") from None
        found = [info[4][0] for info in infos]
    return [ipaddress.ip_address(a) for a in dict.fromkeys(found)]


async def _checked_target(policy: FetchPolicy, url: str, allow: tuple[str, ...]) -> tuple[str, str, IPAddress]:
    parts = urlsplit(url)
    if parts.scheme not in PORTS:
        raise ToolError(f"only http and https URLs are fetched, not {parts.scheme or 'no scheme'!r}")
    host = parts.hostname or ""
    if not host:
        raise ToolError("the URL has no host")
    if parts.username or parts.password:
        raise ToolError("URLs with credentials are not fetched")
    if parts.port not in (None, PORTS[parts.scheme]):
        raise ToolError(f"only the default port of {parts.scheme} is allowed")
    if not on_list(host, allow):
        raise ToolError(f"{host} is not on this tenant's allow-list for fetch_url")
    addresses = await _addresses(policy, host, policy.ports[parts.scheme])
    blocked = [str(a) for a in addresses if not policy.allowed_address(a)]
    if not addresses or blocked:
        raise ToolError(f"{host} resolves to an address that is not public ({', '.join(blocked) or 'none'})")
    return host, parts.scheme, addresses[0]


class _Text(HTMLParser):
    """Visible text of an HTML page: scripts, styles and tags dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in HIDDEN:
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in HIDDEN and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip and data.strip():
            self.parts.append(data.strip())


def page_text(body: str, content_type: str) -> str:
    if "html" not in content_type:
        return body
    parser = _Text()
    parser.feed(body)
    return "\n".join(parser.parts)


async def fetch(url: str, allow: tuple[str, ...], policy: FetchPolicy | None = None) -> dict[str, Any]:
    import httpx

    policy = policy or FetchPolicy()
    async with httpx.AsyncClient(timeout=policy.timeout_s, follow_redirects=False, trust_env=False) as http:
        for _ in range(policy.max_redirects + 1):
            host, scheme, ip = await _checked_target(policy, url, allow)
            parts = urlsplit(url)
            netloc = (f"[{ip}]" if ip.version == 6 else str(ip)) + f":{policy.ports[scheme]}"
            pinned = urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))
            request = http.build_request("GET", pinned, headers={"Host": host, "User-Agent": policy.user_agent,
                                                                 "Accept": "text/*, application/json"},
                                         extensions={"sni_hostname": host})
            try:
                response = await http.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise ToolError(f"cannot fetch {url}: {type(exc).__name__}") from None
            try:
                if response.is_redirect:
                    url = urljoin(url, response.headers.get("location", ""))
                    continue
                kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
                if not kind.startswith(TEXT_TYPES):
                    raise ToolError(f"{url} is {kind or 'of no stated type'}, not text")
                body, truncated = bytearray(), False
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > policy.max_bytes:
                        body, truncated = body[:policy.max_bytes], True
                        break
                text = page_text(body.decode(response.encoding or "utf-8", "replace"), kind)
                return {"url": url, "status": response.status_code, "content_type": kind, "text": text,
                        "truncated": truncated}
            finally:
                await response.aclose()
    raise ToolError(f"more than {policy.max_redirects} redirects")


async def _run(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    if not ctx.fetch_allow:
        raise ToolError("this tenant allows no hosts for fetch_url")
    if len(args["url"]) > MAX_URL:
        raise ToolError(f"the URL is longer than {MAX_URL} characters")
    return await fetch(args["url"], ctx.fetch_allow, ctx.fetch)


TOOL = Tool(
    name="fetch_url",
    description="Fetches a web page or API response (text) from a host this tenant allows, and returns its "
                "visible text (at most 256 KB).",
    # No maxLength: a 2,048-character bound becomes a grammar llama.cpp refuses to build; the handler checks it.
    parameters={"type": "object", "properties": {"url": {"type": "string"}},
                "required": ["url"], "additionalProperties": False},
    handler=_run, timeout_s=12.0)
