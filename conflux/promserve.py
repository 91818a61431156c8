"""A minimal Prometheus text endpoint (GET /metrics) for processes without a web framework.

Counters live in a plain dict owned by the process; rendering is the only shared step."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Metrics:
    """Counters by (name, labels). Process-local; a scrape reads the current values."""

    def __init__(self, prefix: str, labels: dict[str, str]) -> None:
        self.prefix = prefix
        self.labels = labels
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.help: dict[str, str] = {}

    def inc(self, name: str, value: float = 1, help_text: str = "", **labels: str) -> None:
        self.help.setdefault(name, help_text)
        key = (name, tuple(sorted(labels.items())))
        self.counters[key] = self.counters.get(key, 0.0) + value

    def render(self) -> str:
        lines: list[str] = []
        for name in sorted({n for n, _ in self.counters}):
            full = f"{self.prefix}_{name}"
            lines += [f"# HELP {full} {self.help.get(name) or name}", f"# TYPE {full} counter"]
            for (n, labels), value in sorted(self.counters.items()):
                if n == name:
                    tags = ",".join(f'{k}="{v}"' for k, v in (*self.labels.items(), *labels))
                    lines.append(f"{full}{{{tags}}} {value:g}")
        return "\n".join(lines) + "\n"


async def serve_metrics(port: int, render: Callable[[], str], host: str = "127.0.0.1") -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            ok = request_line.split(b" ")[1:2] == [b"/metrics"]
            body = (render() if ok else "not found\n").encode()
            status = b"200 OK" if ok else b"404 Not Found"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; version=0.0.4\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, IndexError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)
