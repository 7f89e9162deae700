"""Optional manifest signing: HMAC-SHA256 with a key from the environment.

With ``RECSYS_ARTIFACT_KEY`` set, ``recsys export`` signs the manifest (``Manifest.signature``,
over the same canonical JSON as ``manifest_sha256``) and every loader (``recsys serve``, the
pyfunc model, ``load_artifact``) refuses a manifest that is unsigned or whose signature does not
match, so an edited manifest (checksums recomputed included) is not served. Without the key,
signatures are neither written nor checked. The key is any string; keep it out of the artifact.

Example:
    $ RECSYS_ARTIFACT_KEY=$(cat /run/secrets/artifact-key) recsys export --run runs/x --out artifacts/x
    $ RECSYS_ARTIFACT_KEY=$(cat /run/secrets/artifact-key) recsys serve --model artifacts/x
"""

from __future__ import annotations

import hashlib
import hmac
import os

KEY_ENV = "RECSYS_ARTIFACT_KEY"
SCHEME = "hmac-sha256:"


def signing_key() -> bytes | None:
    """The key named by ``RECSYS_ARTIFACT_KEY`` (``None`` when unset or empty)."""
    key = os.environ.get(KEY_ENV)
    return key.encode() if key else None


def sign(canonical: bytes, key: bytes) -> str:
    return SCHEME + hmac.new(key, canonical, hashlib.sha256).hexdigest()


def signature_problem(canonical: bytes, signature: str | None, key: bytes | None) -> str | None:
    """Why a manifest with ``signature`` is refused under ``key`` (``None``: accepted)."""
    if key is None:
        return None
    if not signature:
        return f"the manifest is not signed, and {KEY_ENV} is set: only manifests signed with that key are served"
    if not hmac.compare_digest(signature.encode(), sign(canonical, key).encode()):
        return f"the manifest's signature does not match {KEY_ENV}: the manifest was edited, or signed with another key"
    return None
