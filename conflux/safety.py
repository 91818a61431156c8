"""Rule-based safety checks, for what rules do well: personal data, attack markup (role overrides, planted
directives, chat-template tokens) and encodings that hide a request. Each rule names a category of the
taxonomy (infra/safety_taxonomy.toml).

The classifier over the request embedding (conflux/safety_model.py) judges what a request asks for; these
rules are the fast first line and also run on retrieved documents and on answers.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
_PHONE = re.compile(r"(?<!\d)(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?)?\d{3,4}[\s.-]\d{3,4}(?:[\s.-]\d{2,4})?(?!\d)")
_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){13,19}(?!\d)")
_SSN = re.compile(r"\b\d{3}-\d{2}-\d{4}\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:\s?[A-Z0-9]{4}){3,7}\b")

_RULES_NOUN = r"(instructions|rules|prompts?|guidelines|directions|programming|polic(y|ies)|safety)"
# Rule name -> the taxonomy category it evidences; rules not listed evidence a jailbreak.
RULE_CATEGORY = {"system_prompt_leak": "system_prompt_extraction", "new_instructions": "prompt_injection",
                 "injected_directive": "prompt_injection", "addresses_the_ai": "prompt_injection",
                 "token_smuggling": "prompt_injection"}
ATTACK_CATEGORIES = frozenset({"jailbreak", "prompt_injection", "system_prompt_extraction", "obfuscation"})
JAILBREAK_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(rx, re.IGNORECASE))
    for name, rx in (
        # "ignore all previous instructions", "disregard the rules above", "bypass your guidelines"
        ("ignore_instructions", r"\b(ignore|disregard|forget|bypass|override)\b.{0,40}\b" + _RULES_NOUN + r"\b"),
        ("ignore_above", r"\b(ignore|disregard|forget)\s+(everything|all|anything)\s+(above|before|said)\b"),
        ("role_override", r"\byou are (now )?(dan|an? unfiltered|an? uncensored|jailbroken|free from|an? \w+ with "
                          r"(no|zero) (limitations|limits|rules|restrictions))"),
        ("dan", r"\bdo anything now\b|\bDAN mode\b|\bjailbroken (model|ai|assistant)\b"),
        # "developer mode enabled", not "what does developer mode on a phone do"
        ("developer_mode", r"\b(developer|god|admin|debug) mode (enabled|on|activated)\b(?!\s+(an?|the|my|your)\b)"),
        ("system_prompt_leak", r"\b(reveal|print|show|repeat|output|disclose)\b.{0,30}\b(system prompt|hidden "
                               r"instructions|initial instructions|hidden rules|internal notes)\b"),
        ("no_restrictions", r"\b(without|no|zero) (any )?(restrictions|filters|limitations|censorship|content policy|"
                            r"ethical guidelines|safety (rules|filters))\b"),
        ("safety_off", r"\b(disable|turn off|switch off)\b.{0,20}\bsafety\b|\bsafety (is )?(disabled|off)\b"),
        ("never_refuse", r"\bnever refuses?\b|\bobey (me|only this|this document)\b|\bstop following (its|your) rules"),
        ("new_instructions", r"\b(new|real) (instructions|task|rules?)\b\s*(are|is)?\s*:?\s*(to )?"
                             r"(obey|ignore|override|ask|leak|reveal|exfiltrate)"),
        ("pretend_unsafe", r"\bpretend (that )?you (have no|don't have|are not bound by)\b"),
        # A document or message speaking as the system/assistant, or addressing the AI that reads it.
        ("injected_directive", r"(^|\n|[.:!?]\s)\s*(system|assistant)\s*:\s*(ignore|override|new instructions)"),
        ("addresses_the_ai", r"\b(to any ai|if you are an ai|note (to|for) (ai|llms?|ai assistants)|"
                             r"ai (models|assistants) (reading|processing) this)\b"),
        ("token_smuggling", r"<\|im_start\|>|<\|im_end\|>|\[/?INST\]|<<SYS>>"),
    )
)


@dataclass(frozen=True)
class RuleResult:
    categories: tuple[str, ...] = field(default_factory=tuple)
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def attack(self) -> bool:
        """Attack markup was found (jailbreak, injection or extraction phrasing)."""
        return any(c in ATTACK_CATEGORIES for c in self.categories)


def _luhn(digits: str) -> bool:
    total, alt = 0, False
    for ch in reversed(digits):
        d = int(ch)
        if alt:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
        alt = not alt
    return total % 10 == 0


def find_pii(text: str) -> list[str]:
    """Kinds of personal data in the text (email, phone, card, ssn, iban)."""
    kinds = []
    if _EMAIL.search(text):
        kinds.append("email")
    if _SSN.search(text):
        kinds.append("ssn")
    if any(_luhn(re.sub(r"\D", "", m.group())) for m in _CARD.finditer(text)):
        kinds.append("card")
    if _IBAN.search(text):
        kinds.append("iban")
    rest = _CARD.sub(lambda m: " " if _luhn(re.sub(r"\D", "", m.group())) else m.group(), _SSN.sub(" ", text))
    if _PHONE.search(rest):
        kinds.append("phone")
    return kinds


def scrub_pii(text: str) -> str:
    """Replaces personal data by a placeholder naming its kind (for exported training data)."""
    text = _EMAIL.sub("[EMAIL]", text)
    text = _SSN.sub("[SSN]", text)
    text = _CARD.sub(lambda m: "[CARD]" if _luhn(re.sub(r"\D", "", m.group())) else m.group(), text)
    text = _IBAN.sub("[IBAN]", text)
    return _PHONE.sub("[PHONE]", text)


_BASE64 = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{24,}={0,2}(?![A-Za-z0-9+/])")
_HEX = re.compile(r"\b(?:[0-9a-fA-F]{2}[ :]?){16,}\b")


def _readable(raw: bytes) -> str | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    letters = sum(ch.isalpha() or ch.isspace() for ch in text)
    # Words, not binary or a hash: mostly letters and spaces, with at least three words.
    return text if len(text) >= 12 and letters >= 0.85 * len(text) and len(text.split()) >= 3 else None


def decode_hidden(text: str) -> list[str]:
    """Readable text hidden in base64 or hex runs (a request wrapped to get past a filter). The caller judges
    what it says; an encoding alone is not an attack (keys, hashes and images are encoded too)."""
    found = []
    for m in _BASE64.finditer(text):
        blob = m.group()
        try:
            raw = base64.b64decode(blob + "=" * (-len(blob) % 4), validate=True)
        except (binascii.Error, ValueError):
            continue
        if (decoded := _readable(raw)) is not None:
            found.append(decoded)
    for m in _HEX.finditer(text):
        try:
            raw = bytes.fromhex(re.sub(r"[ :]", "", m.group()))
        except ValueError:
            continue
        if (decoded := _readable(raw)) is not None:
            found.append(decoded)
    return found


def check_rules(text: str) -> RuleResult:
    categories: list[str] = []
    reasons: list[str] = []
    for name, rx in JAILBREAK_PATTERNS:
        if rx.search(text):
            cat = RULE_CATEGORY.get(name, "jailbreak")
            if cat not in categories:
                categories.append(cat)
            reasons.append(f"{cat} pattern: {name}")
    pii = find_pii(text)
    if pii:
        categories.append("pii")
        reasons += [f"personal data: {k}" for k in pii]
    return RuleResult(tuple(categories), tuple(reasons))
