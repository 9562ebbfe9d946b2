"""The hash chain and the store's manifest.

Each row's ``row_sha256`` is SHA-256 over the previous row's hash and the row's canonical
JSON (every column but ``row_sha256``), so changing, removing, reordering or inserting
any row changes every hash after it. There is one chain per run and kind; it starts at a
genesis hash derived from the run id and kind, or, for a run resumed from a checkpoint of
another run, at the head that checkpoint recorded.

``MANIFEST.json`` lists each chain's part files in order with their row counts, the hash
before their first row, their head and their file SHA-256; it carries a hash of its own
content so an edit shows, and may be signed (Ed25519, ``MANIFEST.json.sig``) so an edit by
someone without the key shows too. The final heads are what a user records elsewhere
(``summary.json``, every checkpoint, the end of a run's output)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional

MANIFEST = "MANIFEST.json"
SIGNATURE = "MANIFEST.json.sig"
FORMAT = "medr1-trace/1"


def canonical(row: dict[str, Any]) -> bytes:
    """The row as hashed: sorted keys, no spaces, NaN written as NaN (values as ``rows.normalise`` makes them)."""
    body = {k: v for k, v in row.items() if k != "row_sha256"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def row_hash(prev: str, row: dict[str, Any]) -> str:
    h = hashlib.sha256(prev.encode())
    h.update(b"\n")
    h.update(canonical(row))
    return h.hexdigest()


def genesis(run_id: str, kind: str) -> str:
    return hashlib.sha256(f"medr1-trace-genesis|{run_id}|{kind}".encode()).hexdigest()


def combined_head(heads: dict[str, str]) -> str:
    """One hex for all of a run's chains (what the end of a run prints): SHA-256 of ``kind:head`` lines."""
    return hashlib.sha256("".join(f"{k}:{heads[k]}\n" for k in sorted(heads)).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _self_hash(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def new_manifest(run_id: str, run: str) -> dict:
    return {"format": FORMAT, "run_id": run_id, "run": run, "chains": {}, "signed_by": ""}


def read_manifest(directory: Path) -> Optional[dict]:
    p = Path(directory) / MANIFEST
    return json.loads(p.read_text()) if p.is_file() else None


def manifest_self_ok(manifest: dict) -> bool:
    return manifest.get("manifest_sha256") == _self_hash(manifest)


def write_manifest(directory: Path, manifest: dict, signing_key: Optional[str] = None) -> None:
    """Atomically (temporary file, rename): a reader sees the old manifest or the new one, never half."""
    d = Path(directory)
    key = load_private_key(signing_key) if signing_key else None
    manifest["signed_by"] = public_key_hex(key) if key else ""
    manifest["manifest_sha256"] = _self_hash(manifest)
    data = json.dumps(manifest, indent=1, sort_keys=True).encode()
    tmp = d / f".{MANIFEST}.tmp"
    tmp.write_bytes(data)
    if key is not None:
        sig = {"algorithm": "ed25519", "public_key": public_key_hex(key), "signature": key.sign(data).hex()}
        stmp = d / f".{SIGNATURE}.tmp"
        stmp.write_text(json.dumps(sig, indent=1))
        os.replace(stmp, d / SIGNATURE)
    os.replace(tmp, d / MANIFEST)


# --------------------------------------------------------------------------- Ed25519 (optional)
def load_private_key(path: str):
    """An Ed25519 private key from a PEM file (``medr1 trace keygen`` writes one)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"trace signing key {path}: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"trace signing key {path} is not an Ed25519 key")
    return key


def public_key_hex(key) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def generate_key(path: str | Path) -> str:
    """Write a new Ed25519 private key (PEM, mode 600) to ``path``; returns its public key (hex)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return public_key_hex(key)


def check_signature(directory: Path, manifest_bytes: bytes, want_key: Optional[str]) -> Optional[str]:
    """None when the signature holds (and is by ``want_key`` when given); otherwise what is wrong."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    p = Path(directory) / SIGNATURE
    if not p.is_file():
        return f"{SIGNATURE} is missing"
    try:
        sig = json.loads(p.read_text())
        pub = Ed25519PublicKey.from_public_bytes(bytes.fromhex(sig["public_key"]))
        pub.verify(bytes.fromhex(sig["signature"]), manifest_bytes)
    except InvalidSignature:
        return f"the signature in {SIGNATURE} does not match {MANIFEST}"
    except (ValueError, KeyError, TypeError) as e:
        return f"{SIGNATURE} is unreadable ({e})"
    if want_key and sig["public_key"] != want_key:
        return f"{MANIFEST} is signed by {sig['public_key'][:16]}..., not by the expected key {want_key[:16]}..."
    return None
