"""What a model directory must not ask of us before anything loads it: unpickling weights,
or running code shipped with it (``auto_map``) unless ``model.trust_remote_code`` says so."""
from __future__ import annotations

import json
from pathlib import Path

from pipelines.errors import UserError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Files transformers reads an ``auto_map`` from (code to import from the model directory).
CODE_MAPS = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json")


def refuse_unsafe_model(path: str | Path, trust_remote_code: bool = False) -> None:
    """UserError naming the file when a model directory holds only pickled weights, or asks to run its own code."""
    d = Path(path)
    if not d.is_dir():
        return  # a hub id (resolved from the local cache) or missing: the caller says which
    pickles = sorted(p.name for p in d.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
    if pickles and not any(d.glob("*.safetensors")):
        raise UserError(f"{d / pickles[0]}: the model's weights are pickled ({', '.join(pickles[:3])}) and there is "
                        "no *.safetensors: unpickling a file can run code, so medr1 loads safetensors only. Convert "
                        "it (e.g. load it once where you trust it and save_pretrained(..., safe_serialization=True)).")
    for name in CODE_MAPS:
        f = d / name
        if not f.is_file():
            continue
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (ValueError, OSError) as e:
            raise UserError(f"{f}: not readable JSON ({e})") from None
        if isinstance(data, dict) and data.get("auto_map") and not trust_remote_code:
            raise UserError(f"{f}: its auto_map asks to run Python code shipped with the model "
                            f"({', '.join(sorted(data['auto_map']))}); refused. Set model.trust_remote_code=true "
                            "only if you trust that code.")
