"""Files that look like secrets, found before a Ray Job uploads the working dir.

A job's working dir is zipped into the cluster's object store (and its GCS), readable by
whoever can reach the cluster. Keys, tokens and cloud credentials lying in the repository
(an ``.env``, an ``id_rsa``, a service-account JSON) must not travel with the code unless the
user says so (``--exclude`` them, or ``--allow-secrets``). Judged by name first, then by the
content of small files (PEM private keys anywhere, ``private_key`` in JSON)."""
from __future__ import annotations

import re
from pathlib import Path

# Written split so that this file does not look like a key to itself.
_PEM_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE " + rb"KEY-----")
_SA_KEY = re.compile(rb'"private_key"\s*:\s*"-----BEGIN')
_CONTENT_LIMIT = 1 << 20  # content is read only for files up to this size (keys are small)

_TEMPLATES = (".example", ".sample", ".template", ".dist")
_KEY_SUFFIXES = (".pem", ".key", ".p12", ".pfx", ".jks", ".keystore", ".ppk", ".asc", ".gpg")
_NAMES = {".netrc": "netrc credentials", ".git-credentials": "git credentials", ".pgpass": "PostgreSQL passwords",
          ".pypirc": "PyPI credentials", ".npmrc": "npm credentials", ".htpasswd": "password hashes",
          "credentials.json": "cloud credentials", "client_secret.json": "OAuth client secret",
          "kubeconfig": "Kubernetes credentials"}
_IN_DIRS = {(".aws", "credentials"): "AWS credentials", (".aws", "config"): "AWS config",
            (".kube", "config"): "Kubernetes credentials", (".docker", "config.json"): "Docker registry auth",
            (".ssh", None): "SSH keys", (".gnupg", None): "GPG keys", (".huggingface", "token"): "a Hugging Face token",
            (".ray", "auth_token"): "the Ray auth token"}
_TOKEN_STEM = re.compile(r"(^|[_.\-])(auth|access|api|hf|ray|github|gh|bearer|secret|refresh)?[_\-]?token$")


def secret_reason(rel: str | Path, path: Path | None = None) -> str | None:
    """Why the file at ``rel`` (relative to the working dir) looks like a secret; None when it does not."""
    rel = Path(rel)
    name, lower = rel.name, rel.name.lower()
    parts = [p.lower() for p in rel.parts]
    if lower.endswith(_TEMPLATES):
        return None  # .env.example and friends: templates, meant to be shared
    if lower == ".env" or lower.startswith(".env.") or lower == ".envrc":
        return "an environment file (often holds API keys)"
    if re.match(r"id_(rsa|dsa|ecdsa|ed25519)(_sk)?$", lower):
        return "an SSH private key"
    if lower.endswith(_KEY_SUFFIXES):
        return f"a key or certificate store ({Path(name).suffix})"
    if lower in _NAMES:
        return _NAMES[lower]
    for (folder, file), why in _IN_DIRS.items():
        if folder in parts[:-1] and (file is None or lower == file) and not lower.endswith(".pub"):
            return why
    suffix = Path(lower).suffix
    stem = lower[: -len(suffix)] if suffix else lower
    if suffix in ("", ".txt", ".json") and _TOKEN_STEM.search(stem):
        return "a token file"
    if path is not None and not lower.endswith(".pub"):
        return _content_reason(path, lower)
    return None


def _content_reason(path: Path, lower: str) -> str | None:
    try:
        if path.stat().st_size > _CONTENT_LIMIT:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    if lower.endswith(".json") and _SA_KEY.search(data):
        return "a service-account key (JSON with a private_key)"
    if _PEM_KEY.search(data):
        return "a PEM private key inside"
    return None


def find_secrets(root: Path, files: list[Path]) -> list[tuple[str, str]]:
    """(relative path, why) for every file of ``files`` (under ``root``) that looks like a secret."""
    found = []
    for p in files:
        rel = p.relative_to(root).as_posix()
        why = secret_reason(rel, p)
        if why:
            found.append((rel, why))
    return found
