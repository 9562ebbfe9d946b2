"""What trace writing costs a GRPO step: N steps of B x G rows each, written four ways.

    .venv/bin/python bench/bench_traces.py [--steps 40] [--rows-per-step 128] [--step-seconds 6.2]

- ``plain``: the store before chaining (normalise + one Parquet part per flush, on the
  caller's thread, no hash, no manifest, no images): the baseline;
- ``chain, inline``: the chained writer doing all its work on the caller's thread;
- ``chain, background``: the default: the caller only queues rows; the writer thread
  chains, keeps the images, writes parts and the manifest;
- building the rows themselves (``trace_row``), which every variant pays.

Figures are per step; "% of step" divides the time the loop waits by ``--step-seconds``
(6.2 s: a step of the default config on 2 CPU cores, README). The background thread's
own time is shown too: it runs beside the step, competing for the same cores.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_rows(step: int, n: int, images: list[bytes], shas: list[str]) -> list[dict]:
    from pipelines.data.schema import VQARecord
    from pipelines.traces import trace_row

    rows = []
    for i in range(n):
        k = (step * 16 + i // 8) % len(images)
        rec = VQARecord(f"syn-{k:04d}", images[k], "Which imaging modality is shown?",
                        ["CT", "MRI", "X-Ray", "Ultrasound", "Dermoscopy", "Fundus", "Microscopy", "OCT"], "B",
                        "MRI", "modality", "synthetic", index=k)
        text = f"<think>The image shows soft tissue contrast typical of MRI, sample {i}.</think><answer>B</answer>"
        rows.append(trace_row(rec, {"text": text, "token_ids": list(range(24)), "finish_reason": "stop"},
                              kind="train", run="bench", model="tiny", step=step, weight_version=step, worker=i % 2,
                              image_sha256=shas[k], correct=True, format_ok=True, sample_index=i % 8, reward=2.0,
                              reward_components={"accuracy": 1.0, "format": 1.0}, advantage=0.35,
                              weights_sha256="ab" * 32, sampling={"n": 8, "temperature": 1.0}, seed=step,
                              image_png=images[k]))
    return rows


def plain_writer(d: Path, batches: list[list[dict]], flush_every: int) -> float:
    """The pre-chain store: normalise, buffer, one Parquet part per flush (on the caller's thread)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.tracing.rows import normalise, schema

    t0, buf, part = time.perf_counter(), [], 0
    for rows in batches:
        buf.extend(normalise({k: v for k, v in r.items() if k != "_image_png"}) for r in rows)
        if len(buf) >= flush_every:
            pq.write_table(pa.Table.from_pylist(buf, schema=schema()), d / f"train-{part:05d}.parquet")
            buf, part = [], part + 1
    if buf:
        pq.write_table(pa.Table.from_pylist(buf, schema=schema()), d / f"train-{part:05d}.parquet")
    return time.perf_counter() - t0


def chained(d: Path, batches: list[list[dict]], flush_every: int, background: bool) -> tuple[float, float]:
    """(seconds the caller spent in add(), seconds until everything is on disk)."""
    from pipelines.traces import TraceWriter

    w = TraceWriter(d, "train", flush_every=flush_every, background=background)
    t0, caller = time.perf_counter(), 0.0
    for rows in batches:
        t = time.perf_counter()
        w.add(rows)
        caller += time.perf_counter() - t
    w.close()
    return caller, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rows-per-step", type=int, default=128, help="B x G (default config: 16 x 8)")
    ap.add_argument("--flush-every", type=int, default=4096)
    ap.add_argument("--step-seconds", type=float, default=6.2)
    ap.add_argument("--weights-params", type=int, default=4_300_000, help="the tiny Qwen2-VL's 4.3M")
    args = ap.parse_args()
    from PIL import Image

    images = []
    for k in range(96):
        buf = io.BytesIO()
        Image.effect_noise((224, 224), 40 + k).convert("RGB").save(buf, format="PNG")
        images.append(buf.getvalue())
    shas = [hashlib.sha256(b).hexdigest() for b in images]

    t = time.perf_counter()
    batches = [make_rows(s, args.rows_per_step, images, shas) for s in range(args.steps)]
    build = (time.perf_counter() - t) / args.steps
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        # Each variant twice, in turn; the second round is kept (the first warms pyarrow and the page cache).
        for name in ("plain", "chain, inline", "chain, background") * 2:
            d = Path(tempfile.mkdtemp(dir=tmp))
            copy = [[dict(r) for r in rows] for rows in batches]
            if name == "plain":
                total = plain_writer(d, copy, args.flush_every)
                results[name] = (total, total)
            else:
                results[name] = chained(d, copy, args.flush_every, background=name.endswith("background"))
    weights_ms, weights_mb = weights_hash_ms(args.weights_params)
    n, base = args.steps, results["plain"][1]
    print(f"{n} steps x {args.rows_per_step} rows, a part every {args.flush_every} rows; "
          f"building the rows (trace_row): {build * 1e3:.2f} ms/step ({100 * build / args.step_seconds:.3f}% of a "
          f"{args.step_seconds:.1f} s step)")
    print(f"{'writer':<20}{'loop waits ms/step':>20}{'% of step':>11}{'all work ms/step':>18}{'vs plain':>10}")
    for name, (caller, total) in results.items():
        print(f"{name:<20}{caller / n * 1e3:>20.2f}{100 * caller / n / args.step_seconds:>10.3f}%"
              f"{total / n * 1e3:>18.2f}{total / base:>9.2f}x")
    print(f"weights SHA-256 on the learner, once per push: {weights_ms:.1f} ms for {args.weights_params / 1e6:.1f}M "
          f"float32 parameters ({weights_mb:.0f} MB, {weights_mb / weights_ms * 1e3:.0f} MB/s; queued behind the push, "
          f"it overlaps the next rollout)")


def weights_hash_ms(params: int) -> tuple[float, float]:
    """Time of learner/weights_digest.py on a state dict of ``params`` float32 values in 4 MB tensors."""
    import torch

    from learner.weights_digest import weights_digest

    chunk = 1 << 20
    sd = {f"w{i}": torch.randn(min(chunk, params - i * chunk)) for i in range(-(-params // chunk))}
    weights_digest(sd.items())
    t = time.perf_counter()
    weights_digest(sd.items())
    return (time.perf_counter() - t) * 1e3, params * 4 / 2**20


if __name__ == "__main__":
    main()
