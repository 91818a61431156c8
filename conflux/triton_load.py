"""What each Triton model is doing now, from Triton's Prometheus metrics: requests waiting in its queue
(`nv_inference_pending_request_count`) and the mean queue time of the requests it finished since the previous
sample (the change of `nv_inference_queue_duration_us` over the change of requests done), and from those an
expected wait for a new request. Pure functions of the metrics text, so the routing tests need no server."""

from __future__ import annotations

import re
from dataclasses import dataclass

_LINE = re.compile(r'^(nv_inference_(?:pending_request_count|queue_duration_us|request_duration_us|request_success|'
                   r'request_failure))'
                   r'\{[^}]*model="([^"]+)"[^}]*\}\s+([0-9.eE+-]+)$')


@dataclass(frozen=True)
class Counters:
    """One sample of one model's counters."""

    pending: int = 0
    queue_us: float = 0.0  # cumulative
    busy_us: float = 0.0  # cumulative time from a request's arrival to its end (a stream's whole length)
    done: float = 0.0  # cumulative requests finished (succeeded or failed)


@dataclass(frozen=True)
class ModelLoad:
    pending: int  # requests waiting in Triton's queue for this model
    queue_ms: float  # mean time a request waited in the queue, over the last sampling interval
    request_ms: float = 0.0  # mean time a request took, arrival to end, over the same interval

    @property
    def wait_ms(self) -> float:
        """What a new request may expect to wait before it runs: the recent queue time, or the backlog ahead of
        it at the recent pace, whichever is longer (one instance per model here)."""
        return max(self.queue_ms, self.pending * max(0.0, self.request_ms - self.queue_ms))

    def record(self, model: str) -> dict[str, object]:
        """As recorded on routing.decisions (io.conflux.ModelLoad)."""
        return {"model": model, "pending": self.pending, "queue_ms": round(self.queue_ms, 3),
                "wait_ms": round(self.wait_ms, 3)}


def parse(text: str) -> dict[str, Counters]:
    """Per Triton model name, its counters in this metrics text (lines for other metrics are skipped)."""
    raw: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if m := _LINE.match(line):
            name, model, value = m.group(1), m.group(2), float(m.group(3))
            fields = raw.setdefault(model, {})
            fields[name] = fields.get(name, 0.0) + value  # failures come one line per reason
    def total(f: dict[str, float], name: str) -> float:
        return f.get(f"nv_inference_{name}", 0.0)

    return {model: Counters(int(total(f, "pending_request_count")), total(f, "queue_duration_us"),
                            total(f, "request_duration_us"), total(f, "request_success") + total(f, "request_failure"))
            for model, f in raw.items()}


def load(before: dict[str, Counters], now: dict[str, Counters],
         last: dict[str, ModelLoad] | None = None) -> dict[str, ModelLoad]:
    """Each model's load between two samples. A model with no finished request in between keeps a queue time
    of 0 (nothing waited long enough to finish), and its request time from `last` (the previous load): while a
    slow model works through its first requests nothing finishes for seconds, yet its pending count times its
    known pace is the backlog a new request would wait behind."""
    out = {}
    for model, c in now.items():
        prev = before.get(model, Counters())
        done = c.done - prev.done
        if c.queue_us < prev.queue_us:  # Triton restarted (counters reset): nothing known
            out[model] = ModelLoad(c.pending, 0.0)
            continue
        if done <= 0:
            known = (last or {}).get(model, ModelLoad(0, 0.0))
            out[model] = ModelLoad(c.pending, 0.0, max(0.0, known.request_ms - known.queue_ms))  # its service time
            continue
        out[model] = ModelLoad(c.pending, (c.queue_us - prev.queue_us) / done / 1000,
                               (c.busy_us - prev.busy_us) / done / 1000)
    return out
