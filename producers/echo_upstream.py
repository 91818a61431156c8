"""An OpenAI-compatible echo upstream for the peer benchmark: streams `max_tokens` words of the prompt back
as chat.completion.chunk SSE events, the same 16 pieces Triton's echo model sends (`make bench`)."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse


def create_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> StreamingResponse:
        body: dict[str, Any] = await request.json()
        words = str(body["messages"][-1]["content"]).split() or ["echo"]
        n = int(body.get("max_tokens") or 16)
        created = int(time.time())

        async def events() -> AsyncIterator[bytes]:
            for i in range(n):
                piece = (" " if i else "") + words[i % len(words)]
                chunk = {"id": "echo", "object": "chat.completion.chunk", "created": created, "model": "echo",
                         "choices": [{"index": 0, "delta": {"role": "assistant", "content": piece},
                                      "finish_reason": None}]}
                yield f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n".encode()
            end = {"id": "echo", "object": "chat.completion.chunk", "created": created, "model": "echo",
                   "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
            yield f"data: {json.dumps(end, separators=(',', ':'))}\n\ndata: [DONE]\n\n".encode()

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--port", type=int, default=18091)
    args = ap.parse_args()
    uvicorn.run(create_app(), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
