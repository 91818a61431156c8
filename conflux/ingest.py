"""`conflux ingest PATH...`: text and Markdown files become DocumentIngested events on documents.ingest."""

from __future__ import annotations

import hashlib
from pathlib import Path

from conflux.config import Settings
from conflux.errors import ConfluxError
from conflux.kafka import EventPublisher, ManagedProducer
from conflux.schemas import SchemaRegistry
from conflux.serde import AvroSerde, new_envelope
from conflux.stack.base import Progress
from conflux.topics import load_catalogue

SUFFIXES = {".txt": "text/plain", ".md": "text/markdown", ".markdown": "text/markdown"}
MAX_FILE_BYTES = 4 * 1024 * 1024


class IngestError(ConfluxError):
    """A path cannot be ingested."""


def collect(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES)
        elif p.is_file():
            if p.suffix.lower() not in SUFFIXES:
                raise IngestError(f"{p}: only {', '.join(sorted(SUFFIXES))} files can be ingested")
            files.append(p)
        else:
            raise IngestError(f"{p}: no such file or folder")
    if not files:
        raise IngestError("no .txt or .md files found")
    return files


async def ingest_paths(settings: Settings, paths: list[str], tenant_id: str, progress: Progress) -> int:
    files = collect(paths)
    registry = SchemaRegistry()
    serde = AvroSerde(registry)
    producer = ManagedProducer.of(settings.kafka)
    await producer.start()
    try:
        publisher = EventPublisher(producer, serde, load_catalogue(registry=registry))
        for n, f in enumerate(files, 1):
            if f.stat().st_size > MAX_FILE_BYTES:
                raise IngestError(f"{f}: larger than {MAX_FILE_BYTES // (1024 * 1024)} MB; split it first")
            text = f.read_text(encoding="utf-8", errors="replace")
            # The id follows the path, so ingesting a file again replaces its chunks.
            doc_id = "doc-" + hashlib.sha256(str(f.resolve()).encode()).hexdigest()[:16]
            await publisher.publish("documents.ingest", {
                "envelope": new_envelope(tenant_id=tenant_id, conversation_id=doc_id, request_id=doc_id,
                                         producer="conflux-ingest"),
                "document_id": doc_id, "source": f.name, "title": f.stem, "content_type": SUFFIXES[f.suffix.lower()],
                "text": text, "metadata": {"path": str(f)}}, key=doc_id)
            progress(f"[{n}/{len(files)}] {f} ({len(text)} chars) -> {doc_id}")
    finally:
        await producer.stop()
    return len(files)
