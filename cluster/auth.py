"""Token authentication for Ray clients: where the head's token is found, and turning it on.

Ray 2.60 heads started with ``ray start --head`` require a token; clients
(``ray.init``, the Jobs SDK) send it only with ``RAY_AUTH_MODE=token``.
``cluster.connect`` and ``cluster.jobs`` both go through here.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


def token_path() -> Path:
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def read_token() -> Optional[str]:
    tok = os.environ.get("RAY_AUTH_TOKEN")
    if tok:
        return tok.strip()
    p = token_path()
    try:
        return p.read_text().strip() or None if p.is_file() else None
    except OSError:
        return None


def setup_client_auth() -> bool:
    """Turn on token auth for this process's Ray clients when a token exists.

    Ray 2.60 heads started with ``ray start --head`` require a token; the Jobs
    SDK sends it only with ``RAY_AUTH_MODE=token``. An explicit RAY_AUTH_MODE is respected.
    Returns whether requests will carry a token.
    """
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None:
        return mode.lower() == "token"
    if read_token() is None:
        return False
    os.environ["RAY_AUTH_MODE"] = "token"
    try:  # if Ray's config was already read in this process, refresh it
        from ray._raylet import Config  # type: ignore

        Config.initialize("")
    except Exception:
        pass
    return True
