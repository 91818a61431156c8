"""A ClickHouse HTTP endpoint backed by chdb, the in-process ClickHouse engine.

Why: no registry ships a modern ClickHouse server binary, and chdb allows one process per data folder.
This process owns the folder and speaks the subset of ClickHouse's HTTP interface that clickhouse-connect
uses, so sinks, the metrics API and tests all talk to it exactly as they would to a real server by URL.
Queries run one at a time under a lock (chdb sessions are not thread-safe); that is fine for local use.

Run: python -m conflux.clickhouse_server --path .conflux/clickhouse --port 8123
"""

from __future__ import annotations

import argparse
import email.policy
import gzip
import json
import logging
import re
import signal
import tempfile
import threading
import time
import uuid
import zlib
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from chdb import session as chdb_session

log = logging.getLogger("conflux.clickhouse")

MAX_BODY_BYTES = 512 * 1024 * 1024
# URL parameters that steer the HTTP transport rather than the query; never applied as settings.
TRANSPORT_PARAMS = {
    "query", "database", "session_id", "session_timeout", "session_check", "query_id", "default_format",
    "compress", "decompress", "enable_http_compression", "send_progress_in_http_headers",
    "http_headers_progress_interval_ms", "wait_end_of_query", "user", "password", "quota_key",
    "buffer_size", "client_protocol_version", "cancel_http_readonly_queries_on_client_close",
}
_FORMAT_RE = re.compile(r"\bFORMAT\s+([A-Za-z0-9_]+)\s*;?\s*$", re.IGNORECASE)
_INSERT_DATA_RE = re.compile(rb"^\s*INSERT\s+INTO\s+.*?\bFORMAT\s+([A-Za-z0-9_]+)[ \t]*\r?\n", re.I | re.S)
_CODE_RE = re.compile(r"Code:\s*(\d+)")
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class QueryFailed(Exception):
    def __init__(self, code: int, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def _decompress(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if not encoding or encoding == "identity":
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "lz4":
        import lz4.frame  # shipped with clickhouse-connect

        out, rest = [], body
        while rest:  # a body may hold several concatenated frames
            dec = lz4.frame.LZ4FrameDecompressor()
            out.append(dec.decompress(rest))
            rest = dec.unused_data
        return b"".join(bytes(o) for o in out)
    raise QueryFailed(1, f"Unknown Content-Encoding of HTTP request: {encoding}", 400)


def _form_fields(content_type: str, body: bytes) -> dict[str, str]:
    """The fields of a multipart/form-data body, as ClickHouse's HTTP interface accepts them."""
    message = BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = payload.decode()
    return fields


def _sql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class ChdbEngine:
    """One chdb session over one data folder; every call is serialised."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.tmp = path / "tmp-inserts"
        self.tmp.mkdir(exist_ok=True)
        self._session = chdb_session.Session(str(path))
        self._lock = threading.Lock()

    def run(self, sql: str, fmt: str, params: dict[str, str], database: str | None) -> tuple[bytes, dict[str, Any]]:
        with self._lock:
            try:
                if database:
                    self._session.query(f"USE {database}", "TabSeparated")
                res = self._session.query(sql, fmt, params=params or None)
            except Exception as exc:  # chdb raises ChdbError/RuntimeError with ClickHouse's text
                msg = str(exc)
                m = _CODE_RE.search(msg)
                raise QueryFailed(int(m.group(1)) if m else 1001, msg) from exc
            summary = {
                "read_rows": str(res.rows_read()),
                "read_bytes": str(res.bytes_read()),
                "written_rows": str(res.rows_written()),
                "written_bytes": str(res.bytes_written()),
                "elapsed_ns": str(int(res.elapsed() * 1e9)),
            }
            return res.bytes() or b"", summary

    def close(self) -> None:
        """Cancels background merges (they resume at the next start), then closes the session. Without this,
        after CI's 10-minute soak the interpreter's exit kept ClickHouse running 20 s past SIGTERM until it was
        killed (most likely waiting on a merge; with this, it stopped in 0.6 s after the same soak)."""
        with self._lock:  # no request is mid-query
            t0 = time.monotonic()
            try:
                self._session.query("SYSTEM STOP MERGES", "TabSeparated")
            except Exception as exc:  # noqa: BLE001 - closing must go on; the log says what failed
                log.warning("could not stop merges before closing: %s", exc)
            self._session.close()
            log.info("chdb session closed in %.1fs", time.monotonic() - t0)

    def insert(self, statement: str, data: bytes, database: str | None) -> dict[str, Any]:
        """INSERT ... FORMAT X with a data body: chdb reads the data through FROM INFILE."""
        m = _FORMAT_RE.search(statement)
        if not m:
            raise QueryFailed(62, "INSERT with a data body needs a FORMAT clause", 400)
        head = statement[: m.start()].rstrip()
        with tempfile.NamedTemporaryFile(dir=self.tmp, suffix=".bin") as f:
            f.write(data)
            f.flush()
            sql = f"{head} FROM INFILE {_sql_string(f.name)} FORMAT {m.group(1)}"
            _, summary = self.run(sql, "TabSeparated", {}, database)
        return summary


class Handler(BaseHTTPRequestHandler):
    server_version = "conflux-chdb"
    engine: ChdbEngine  # set on the subclass made by make_server

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._handle(b"")

    def do_POST(self) -> None:
        try:
            body = self._read_body()
        except QueryFailed as exc:
            self._fail(exc)
            return
        self._handle(body)

    def _read_body(self) -> bytes:
        """Reads a Content-Length or chunked body (clickhouse-connect streams inserts chunked)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                total += size
                if total > MAX_BODY_BYTES:
                    raise QueryFailed(241, f"request body exceeds {MAX_BODY_BYTES} bytes", 413)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise QueryFailed(241, f"request body of {length} bytes exceeds {MAX_BODY_BYTES}", 413)
        return self.rfile.read(length) if length else b""

    def _handle(self, raw_body: bytes) -> None:
        url = urlsplit(self.path)
        if url.path in ("/ping", "/replicas_status"):
            self._reply(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
            return
        if url.path not in ("/", ""):
            self._fail(QueryFailed(0, f"There is no handle {url.path}", 404))
            return
        try:
            self._query(dict(parse_qsl(url.query, keep_blank_values=True)), raw_body)
        except QueryFailed as exc:
            self._fail(exc)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            self._fail(QueryFailed(27, f"cannot process request: {exc}", 400))

    def _query(self, params: dict[str, str], raw_body: bytes) -> None:
        body = _decompress(raw_body, self.headers.get("Content-Encoding", ""))
        content_type = self.headers.get("Content-Type", "")
        if content_type.startswith("multipart/form-data"):
            # Clients send long parameters (big IN lists) as form fields instead of in the URL.
            params = {**params, **_form_fields(content_type, body)}
            body = b""
        database = params.get("database") or None
        bind = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
        settings = {
            k: v for k, v in params.items()
            if k not in TRANSPORT_PARAMS and not k.startswith("param_") and _SETTING_NAME.match(k)
        }
        query_id = params.get("query_id") or str(uuid.uuid4())
        headers = {"X-ClickHouse-Query-Id": query_id, "X-ClickHouse-Timezone": "UTC"}
        if "query" in params:
            statement, data = params["query"], body
        else:
            m = _INSERT_DATA_RE.match(body)
            statement, data = (body[: m.end()].decode(), body[m.end():]) if m else (body.decode(), b"")
        statement = statement.strip()
        if not statement:
            raise QueryFailed(62, "Empty query", 400)
        if settings:
            statement = self._with_settings(statement, settings)
        if data and statement.lstrip()[:6].upper() == "INSERT":
            summary = self.engine.insert(statement, data, database)
            self._reply(200, b"", {**headers, "X-ClickHouse-Summary": json.dumps(summary)})
            return
        fm = _FORMAT_RE.search(statement)
        fmt = fm.group(1) if fm else params.get("default_format", "TabSeparated")
        out, summary = self.engine.run(statement, fmt, bind, database)
        headers |= {"X-ClickHouse-Format": fmt, "X-ClickHouse-Summary": json.dumps(summary)}
        self._reply(200, out, {**headers, "Content-Type": "application/octet-stream"})

    @staticmethod
    def _with_settings(statement: str, settings: dict[str, str]) -> str:
        """Query-level settings travel as a SETTINGS clause so they never leak into later requests."""
        if not statement.lstrip().upper().startswith(("SELECT", "WITH")):
            return statement  # DDL and inserts take no SETTINGS clause here; transport settings are dropped
        clause = ", ".join(f"{k}={_sql_string(v) if not v.isdigit() else v}" for k, v in settings.items())
        fm = _FORMAT_RE.search(statement)
        if fm:
            return f"{statement[: fm.start()].rstrip()} SETTINGS {clause} {statement[fm.start():]}"
        return f"{statement} SETTINGS {clause}"

    def _fail(self, exc: QueryFailed) -> None:
        log.info("query failed (code %s): %s", exc.code, str(exc)[:500])
        text = str(exc) if str(exc).startswith("Code:") else f"Code: {exc.code}. DB::Exception: {exc}"
        self._reply(exc.status, text.encode() + b"\n", {
            "X-ClickHouse-Exception-Code": str(exc.code), "Content-Type": "text/plain; charset=UTF-8"})

    def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def make_server(engine: ChdbEngine, host: str, port: int) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"engine": engine})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--path", type=Path, required=True, help="chdb data folder (owned by this process)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8123)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine = ChdbEngine(args.path)
    server = make_server(engine, args.host, args.port)

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %s: shutting down", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("conflux-chdb serving %s on http://%s:%s", args.path, args.host, args.port)
    server.serve_forever()
    server.server_close()
    engine.close()
    log.info("stopped")


if __name__ == "__main__":
    main()
