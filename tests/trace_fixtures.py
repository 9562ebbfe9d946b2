"""A `medr1 evaluate`-shaped output directory written by the real code (rows, writer,
eval.json), with no model: what the trace CLI and report tests read."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

from PIL import Image

MAGENTA, GREEN = (255, 0, 255), (0, 200, 0)
MODALITIES = ["CT", "MRI", "X-Ray"]


def png_of(color, size=(112, 112)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def reasoning_of(i: int) -> str:
    return f"Case {i}: the image is a flat {'magenta' if i % 2 else 'green'} field, so I pick this modality."


def write_eval_dir(out: Path, n: int = 9) -> list[dict]:
    """n eval rows (odd ones magenta images, even ones green); every third answer right."""
    from pipelines.data.schema import VQARecord
    from pipelines.evaluation.accuracy import score_completion, summarize
    from pipelines.evaluation.evaluate import write_outputs
    from pipelines.traces import trace_row

    rows = []
    for i in range(n):
        png = png_of(MAGENTA if i % 2 else GREEN)
        rec = VQARecord(f"p{i}", png, f"Which modality is image {i}?", MODALITIES, "ABC"[i % 3],
                        MODALITIES[i % 3], "modality", "syn", index=i)
        text = f"<think>{reasoning_of(i)}</think><answer>{'ABC'[(i * 2) % 3]}</answer>"
        s = score_completion(text, rec.answer)
        rows.append(trace_row(rec, {"text": text, "token_ids": [1] * 5}, kind="eval", run=out.name, model="m",
                              step=-1, weight_version=0, worker=0, image_sha256=hashlib.sha256(png).hexdigest(),
                              correct=s["correct"], format_ok=s["format_ok"], sampling={"n": 1, "temperature": 0},
                              image_png=png))
    write_outputs(out, summarize(rows), list(rows), {"model": "m", "data": "data/syn", "split": "test"})
    return rows
