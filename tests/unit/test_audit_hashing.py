"""The audit chain's hashing, without a database: the canonical form is RFC 8785's for every
JSON value (the fast orjson path included), and hashes, digests and signatures are what the
README tells an outside auditor to compute."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import Event, i_json
from service.audit.chain import canonical, checkpoint_digest, event_hash
from service.audit.signing import (
    CheckpointSigner,
    SigningKeyError,
    new_signing_key,
    signature_holds,
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=2000, deadline=None)
@given(json_values)
def test_the_canonical_form_is_rfc_8785_for_any_json_value(value: Any) -> None:
    assert canonical(value) == rfc8785.dumps(value)


@pytest.mark.parametrize(
    "value",
    [1.0, 1e21, 1e-7, 2.5e-6, 1e16, -0.0, {"é": 1, "z": 2}, {"\ue000": 1, "\U0001f600": 2},
     "\u2028\x7f\x00", [0.1, 4.5, 123456789.125]],
)  # fmt: skip
def test_values_where_orjson_and_rfc_8785_differ_take_the_rfc_8785_path(value: Any) -> None:
    assert canonical(value) == rfc8785.dumps(value)


def event(**overrides: Any) -> Event:
    fields: dict[str, Any] = {
        "id": 1042, "job_id": "job_01M8THVP3C0PGPKRAYBTP0FV8G", "seq": 3, "type": "status_changed",
        "from_status": "queued", "to_status": "running", "source": "webhook",
        "data": {"provider_status": "IN_PROGRESS", "guidance_scale": 4.5, "seed": 2**60},
        "created_at": datetime(2026, 11, 21, 10, 0, 1, 250_999, tzinfo=UTC),
    }  # fmt: skip
    return Event.model_validate({**fields, **overrides})


def test_an_event_hash_is_sha256_of_its_api_form_without_hash() -> None:
    prev = "ab" * 32
    ours = event_hash(event(), prev_hash=prev)
    api = json.loads(event(prev_hash=prev, hash=ours).model_dump_json())
    assert api["created_at"] == "2026-11-21T10:00:01.250Z"
    assert api["data"]["seed"] == str(2**60)  # beyond I-JSON: a string, so it can be hashed
    body = {k: v for k, v in api.items() if k != "hash"}
    assert ours == hashlib.sha256(rfc8785.dumps(body)).hexdigest()


def test_the_hash_covers_every_field_and_the_previous_hash() -> None:
    base = event_hash(event(), prev_hash=None)
    changes = [
        {"id": 1043}, {"job_id": "job_01M8THVP3C0PGPKRAYBTP0FV8H"}, {"seq": 4},
        {"type": "observation_ignored"}, {"from_status": "submitted"}, {"to_status": None},
        {"source": "poll"}, {"data": {"provider_status": "IN_PROGRESS"}},
        {"created_at": datetime(2026, 11, 21, 10, 0, 2, tzinfo=UTC)},
    ]  # fmt: skip
    hashes = {event_hash(event(**change), prev_hash=None) for change in changes}
    assert base not in hashes and len(hashes) == len(changes)
    assert event_hash(event(), prev_hash="00" * 32) != base


def test_i_json_writes_unsafe_integers_as_strings_at_any_depth() -> None:
    value = {"a": [2**53 - 1, 2**53, {"b": -(2**53)}], "c": True, "d": 1.5}
    assert i_json(value) == {
        "a": [2**53 - 1, str(2**53), {"b": str(-(2**53))}],
        "c": True,
        "d": 1.5,
    }


def test_a_checkpoint_digest_does_not_depend_on_the_order_of_its_heads() -> None:
    heads = [("job_b", "22" * 32), ("job_a", "11" * 32)]
    digest = checkpoint_digest(prev_digest=None, last_event_id=9, heads=heads)
    assert digest == checkpoint_digest(prev_digest=None, last_event_id=9, heads=heads[::-1])
    expected = {"prev_digest": None, "last_event_id": 9,
                "heads": [["job_a", "11" * 32], ["job_b", "22" * 32]]}  # fmt: skip
    assert digest == hashlib.sha256(rfc8785.dumps(expected)).hexdigest()
    assert digest != checkpoint_digest(prev_digest=None, last_event_id=9, heads=heads[:1])


def test_signatures_hold_only_for_their_key_and_digest() -> None:
    signer = CheckpointSigner(new_signing_key())
    signature = signer.sign("cd" * 32)
    assert signature_holds(public_key=signer.public_key, digest="cd" * 32, signature=signature)
    assert not signature_holds(public_key=signer.public_key, digest="ce" * 32, signature=signature)
    other = CheckpointSigner(new_signing_key()).public_key
    assert not signature_holds(public_key=other, digest="cd" * 32, signature=signature)
    assert not signature_holds(public_key="not base64!", digest="cd" * 32, signature=signature)


@pytest.mark.parametrize("key", ["not base64!", "AAAA"])
def test_a_bad_signing_key_is_refused(key: str) -> None:
    with pytest.raises(SigningKeyError):
        CheckpointSigner(key)
