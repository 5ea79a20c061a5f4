"""The scanner of tests/security finds secrets in every form a log line may hold them: the
negative control that shows the acceptance-level test can fail."""

from __future__ import annotations

import re
from urllib.parse import quote, quote_plus

import pytest

from tests.security.scan import encoded_forms, find_leaks

TOKEN = "val0LJxQbpkFbS8xQAJJL-UDdtJvt5xRjKIndpAs690"
WHSEC = "whsec_ab+cd/ef0123456789ABCDEF=="  # base64 has characters that get encoded
CALLBACK = f"http://127.0.0.1:1/callbacks/fal/job_01ABC/{TOKEN}"
SECRETS = [("callback_token", TOKEN), ("client_webhook_secret", WHSEC), ("fal_key", "k")]


def lower_escapes(text: str) -> str:
    return re.sub(r"%(?:25)*[0-9A-F]{2}", lambda m: m.group().lower(), text)


def enc(text: str, times: int = 1) -> str:
    for _ in range(times):
        text = quote(text, safe="")
    return text


@pytest.mark.parametrize(
    ("line", "kind", "form"),
    [
        # httpx's INFO line before the fix: the token is in the URL-encoded fal_webhook value
        (f'{{"event":"HTTP Request: POST http://fal/x?fal_webhook={enc(CALLBACK)}"}}', "callback_token", "verbatim"),
        (f"x={enc(CALLBACK, 2)}", "callback_token", "verbatim"),  # a token has nothing to encode
        (f"GET {CALLBACK} 200", "callback_token", "verbatim"),
        (f"secret={WHSEC}", "client_webhook_secret", "verbatim"),
        (f"secret={quote(WHSEC)}", "client_webhook_secret", "quote"),
        (f"secret={quote_plus(WHSEC)}", "client_webhook_secret", "quote_all"),  # the same string
        (f"secret={lower_escapes(enc(WHSEC))}", "client_webhook_secret", "quote_all_lowercase"),
        (f"secret={enc(WHSEC, 2)}", "client_webhook_secret", "double_quote"),
        (f"secret={lower_escapes(enc(WHSEC, 2))}", "client_webhook_secret", "double_quote_lowercase"),
        (f"secret={enc(WHSEC, 3)}", "client_webhook_secret", "decoded"),  # found once decoded
    ],
)  # fmt: skip
def test_a_secret_is_found_in_any_encoding(line: str, kind: str, form: str) -> None:
    log = f"first line\n{line}\nlast line"
    leaks = find_leaks({"stdout": log}, SECRETS)
    assert [(leak.kind, leak.form, leak.source, leak.line) for leak in leaks] == [
        (kind, form, "stdout", 2)
    ]
    assert TOKEN not in leaks[0].excerpt and "ef0123456789" not in leaks[0].excerpt  # masked


def test_redacted_lines_and_short_values_are_not_leaks() -> None:
    log = (
        "HTTP Request: POST http://fal/x?fal_webhook=[redacted]\n"
        "path=/callbacks/fal/job_01ABC/[redacted] key=k token=t"
    )
    assert find_leaks({"stdout": log}, SECRETS) == []


def test_the_forms_of_a_secret() -> None:
    forms = encoded_forms("a+b/c=d0123")
    assert forms["verbatim"] == "a+b/c=d0123"
    assert forms["quote"] == "a%2Bb/c%3Dd0123"
    assert forms["quote_all"] == "a%2Bb%2Fc%3Dd0123"
    assert forms["double_quote"] == "a%252Bb%252Fc%253Dd0123"
    assert forms["quote_all_lowercase"] == "a%2bb%2fc%3dd0123"
    assert len(set(forms.values())) == len(forms)
