"""Optional Ed25519 signatures of checkpoints (AUDIT_SIGNING_KEY), so that a checkpoint cannot
be forged even by someone who may write to the database: only the holder of the key signs,
and anyone may check with the published public key. The signed message is the checkpoint's
digest, as its 64 ASCII hex characters; keys and signatures travel as standard base64."""

from __future__ import annotations

import base64
import binascii

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


class SigningKeyError(ValueError):
    """AUDIT_SIGNING_KEY is not the base64 of a 32-byte Ed25519 private key."""


class CheckpointSigner:
    """Signs checkpoint digests with one Ed25519 key."""

    def __init__(self, private_key_b64: str) -> None:
        try:
            raw = base64.b64decode(private_key_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SigningKeyError("AUDIT_SIGNING_KEY is not base64") from exc
        if len(raw) != 32:
            raise SigningKeyError("AUDIT_SIGNING_KEY must hold 32 bytes (an Ed25519 seed)")
        self._key = Ed25519PrivateKey.from_private_bytes(raw)
        public = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.public_key = base64.b64encode(public).decode()

    def sign(self, digest: str) -> str:
        return base64.b64encode(self._key.sign(digest.encode("ascii"))).decode()


def new_signing_key() -> str:
    """A fresh private key in AUDIT_SIGNING_KEY's form (`python -m service audit keygen`)."""
    raw = Ed25519PrivateKey.generate().private_bytes_raw()
    return base64.b64encode(raw).decode()


def signature_holds(*, public_key: str, digest: str, signature: str) -> bool:
    """Whether `signature` is `public_key`'s signature of `digest`."""
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key, validate=True))
        key.verify(base64.b64decode(signature, validate=True), digest.encode("ascii"))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True
