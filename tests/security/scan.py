"""Looks for secrets in log text the way a reader of the logs would find them: verbatim,
percent-encoded (quote, quote_plus, twice, lowercase hex) and, after decoding every line until
nothing changes, in any other encoding depth."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, quote_plus, unquote

# The environment variable naming the ledger file tests.security.secrets_ledger writes.
LEDGER_ENV = "SECRETS_LEDGER"
# Shorter values ("k", "t" in tests that never reach a provider) would be found everywhere.
MIN_SECRET_CHARS = 8
# Runs of text between these are what a secret can hide in (a secret containing one of them is
# searched for in the whole text instead).
_DELIMITERS = re.compile(r"[\s\"'<>]+")
_PERCENT_HEX = re.compile(r"%(?:25)*[0-9A-F]{2}")  # %2B, and %252B encoded twice


@dataclass(frozen=True)
class Leak:
    kind: str
    form: str
    source: str
    line: int
    excerpt: str  # the line with every secret masked


def encoded_forms(secret: str) -> dict[str, str]:
    """The forms a secret takes in URLs: as is, percent-encoded once and twice (quote,
    quote_plus, `/` kept or not) and with lowercase hex."""
    forms = {
        "verbatim": secret,
        "quote": quote(secret),
        "quote_all": quote(secret, safe=""),
        "quote_plus": quote_plus(secret),
        "double_quote": quote(quote(secret, safe=""), safe=""),
        "double_quote_plus": quote_plus(quote_plus(secret)),
    }
    for name, form in list(forms.items()):
        forms[f"{name}_lowercase"] = _PERCENT_HEX.sub(lambda m: m.group().lower(), form)
    unique: dict[str, str] = {}
    for name, form in forms.items():
        if form not in unique.values():
            unique[name] = form
    return unique


def fully_decoded(line: str) -> str:
    """Percent-decodes a line until it no longer changes (any depth of encoding)."""
    for _ in range(8):
        decoded = unquote(line)
        if decoded == line:
            break
        line = decoded
    return line


class _Corpus:
    """One text prepared for many substring searches: its distinct runs, joined."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.text = "\n".join(lines)
        runs = {run for line in lines for run in _DELIMITERS.split(line) if run}
        self.runs = "\n".join(runs)

    def __contains__(self, needle: str) -> bool:
        if _DELIMITERS.search(needle):
            return needle in self.text
        return needle in self.runs

    def first_line(self, needle: str) -> int:
        return next(i for i, line in enumerate(self.lines) if needle in line)


def usable(secrets: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Secret value -> its kind, for the values long enough to be searched."""
    return {value: kind for kind, value in secrets if len(value) >= MIN_SECRET_CHARS}


def _mask(line: str, secrets: Mapping[str, str]) -> str:
    """The line with every secret replaced by its kind (decoded first if that is what it takes),
    so that a report of leaks does not leak them again."""
    for text in (line, fully_decoded(line)):
        masked = text
        for value, kind in secrets.items():
            for form in encoded_forms(value).values():
                masked = masked.replace(form, f"<{kind}>")
        if masked != text:
            return masked[:400]
    return "(line not shown: the secret could not be masked in it)"


def find_leaks(sources: Mapping[str, str], secrets: Iterable[tuple[str, str]]) -> list[Leak]:
    """Every secret found in a source, once per form it appears in, with the first line it is
    on (masked). A secret in no listed form but there once the lines are decoded is reported
    with the form `decoded`."""
    wanted = usable(secrets)
    leaks = []
    for source, text in sources.items():
        raw = _Corpus(text.splitlines())
        decoded = _Corpus([fully_decoded(line) for line in raw.lines])
        for value, kind in wanted.items():
            found = [(name, form) for name, form in encoded_forms(value).items() if form in raw]
            for name, form in found:
                index = raw.first_line(form)
                leaks.append(Leak(kind, name, source, index + 1, _mask(raw.lines[index], wanted)))
            if not found and value in decoded:
                index = decoded.first_line(value)
                leaks.append(
                    Leak(kind, "decoded", source, index + 1, _mask(raw.lines[index], wanted))
                )
    return leaks
