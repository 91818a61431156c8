"""What ends a request, as one value: its closing events (`chat.responses` last), the caller's final chunk and
the cost to settle. The holder of a request's end records it in Redis in the same step as it claims the end,
before any of it is published (streams/once.py `claim_end`): a worker that takes the end over from a holder
that died part-way publishes *that* ending again, under the same event ids (which the log's consumers
deduplicate), instead of an ending of its own. A kill -9 between the holder's `chat.responses` and its end
mark had let a replay refuse the request for the budget the answer had just spent, and record a second end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from conflux.serde import AvroSerde
from conflux.topics import Catalogue

PREFIX = "end:"  # hash fields of the request's context (streams/context.py) that hold its recorded ending
_FINAL = f"{PREFIX}final"
RECORDED = f"{PREFIX}cost"  # the field every recorded ending has


@dataclass(frozen=True)
class Ending:
    key: str  # the events' partition key (the conversation)
    events: list[tuple[str, dict[str, Any]]]  # (topic, record), published in this order
    final: dict[str, Any] | None = None  # the caller's final chunk; None when no caller waits (expired)
    micros: int = 0  # what the request is charged (its hold is settled at this)
    tokens: int = 0

    def fields(self, serde: AvroSerde, catalogue: Catalogue) -> dict[str, bytes]:
        """The hash fields that record this ending: each event Avro-encoded under `end:<n>:<topic>`."""
        out = {f"{PREFIX}{n}:{topic}": serde.encode(catalogue.get(topic).schema, record)
               for n, (topic, record) in enumerate(self.events)}
        if self.final is not None:
            out[_FINAL] = serde.encode("token_chunk", {"choice": 0, **self.final})
        out[RECORDED] = f"{self.micros} {self.tokens} {self.key}".encode()
        return out

    @classmethod
    def recorded(cls, serde: AvroSerde, fields: dict[bytes, bytes]) -> Ending | None:
        """The ending recorded in these hash fields (all of the context hash), or None if none was."""
        mine = {k.decode(): v for k, v in fields.items() if k.startswith(PREFIX.encode())}
        if RECORDED not in mine:
            return None
        micros, tokens, key = mine.pop(RECORDED).decode().split(" ", 2)
        final = mine.pop(_FINAL, None)
        final_record = serde.decode(final).record if final is not None else None
        events = sorted((int(k.split(":")[1]), k.split(":", 2)[2], serde.decode(v).record) for k, v in mine.items())
        return cls(key=key, events=[(topic, record) for _, topic, record in events], final=final_record,
                   micros=int(micros), tokens=int(tokens))
