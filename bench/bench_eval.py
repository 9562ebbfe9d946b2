"""Evaluation throughput: R vLLM rollout actors (R=1, R=2) vs HF ``generate`` (batched,
greedy) on the same tiny Qwen2-VL and the same prompts.

    .venv/bin/python bench/bench_eval.py [--prompts 40] [--max-new-tokens 32] [--hf-batch 8] [--workers 1,2]

The vLLM rows time ``pipelines.evaluation.evaluate_records`` (chat template, sharding,
generation, scoring) after the engines are up; engine start-up is shown apart. The
HF row times the processor + ``generate`` over batches (left padding) + the same
scoring. One table, side by side.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MAX_PIXELS = 112 * 112


def make_records(n: int):
    from pipelines.data.synthetic import build_synthetic

    per_cell = max(1, -(-n // 40))
    recs = build_synthetic(per_cell=per_cell, image_size=112, test_fraction=0.0)["train"]
    step = max(1, len(recs) // n)
    return recs[::step][:n]


def bench_hf(model_dir: str, records, max_new_tokens: int, batch: int, threads: int) -> dict:
    import torch
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    from learner.image_codec import decode_image
    from pipelines.evaluation.accuracy import score_completion
    from pipelines.prompts import chat_prompt

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    proc = AutoProcessor.from_pretrained(model_dir)
    proc.tokenizer.padding_side = "left"
    model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    startup = time.perf_counter() - t0
    t0 = time.perf_counter()
    correct = tokens = 0
    eos = proc.tokenizer.eos_token_id
    pad = proc.tokenizer.pad_token_id if proc.tokenizer.pad_token_id is not None else eos
    for i in range(0, len(records), batch):
        chunk = records[i:i + batch]
        texts = [chat_prompt(proc, r, "think") for r in chunk]
        images = [decode_image(r.image) for r in chunk]
        inputs = proc(text=texts, images=images, return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
        gen = out[:, inputs["input_ids"].shape[1]:]
        for r, ids in zip(chunk, gen.tolist()):
            ids = ids[: ids.index(eos) + 1] if eos in ids else ids
            tokens += len(ids)
            text = proc.tokenizer.decode(ids, skip_special_tokens=True)
            correct += score_completion(text, r.answer)["correct"]
    seconds = time.perf_counter() - t0
    return {"backend": f"HF generate (batch {batch})", "R": 1, "n": len(records), "seconds": seconds,
            "tokens": tokens, "startup": startup, "accuracy": correct / len(records)}


def bench_vllm(model_dir: str, records, max_new_tokens: int, R: int) -> dict:
    import ray
    from transformers import AutoTokenizer

    from actors.rollout import cpu_core_binding, create_rollout_workers, wait_ready
    from actors.vllm_engine import cpu_engine_env
    from pipelines.evaluation.evaluate import evaluate_records

    tok = AutoTokenizer.from_pretrained(model_dir)
    kwargs = dict(model_path=model_dir, max_model_len=1024, kv_cache_memory_bytes=128 << 20,
                  max_pixels=MAX_PIXELS, seed=0)
    envs = [{**cpu_engine_env(cpu_core_binding(i, R)), "PYTHONPATH": str(REPO)} for i in range(R)]
    t0 = time.perf_counter()
    workers = create_rollout_workers(R, kwargs, num_cpus=1, env_vars=envs, name_prefix=f"bench-eval-r{R}")
    wait_ready(workers)
    startup = time.perf_counter() - t0
    try:
        evaluate_records(workers, records[: 2 * R], tokenizer=tok, max_new_tokens=4, progress=False)  # warm-up
        m = evaluate_records(workers, records, tokenizer=tok, max_new_tokens=max_new_tokens, progress=False)
    finally:
        for w in workers:
            ray.kill(w)
    return {"backend": "vLLM rollout actors", "R": R, "n": m["n"], "seconds": m["seconds"], "tokens": m["tokens"],
            "startup": startup, "accuracy": m["overall"]["accuracy"]}


def print_table(results: list[dict], base: dict) -> None:
    head = f"{'backend':<26} {'R':>2} {'prompts':>7} {'seconds':>8} {'prompts/s':>10} {'tokens/s':>9} " \
           f"{'speed-up':>8} {'start-up s':>10} {'accuracy':>8}"
    print(head)
    print("-" * len(head))
    for r in results:
        pps = r["n"] / r["seconds"] if r["seconds"] else 0.0
        base_pps = base["n"] / base["seconds"] if base["seconds"] else 0.0
        print(f"{r['backend']:<26} {r['R']:>2} {r['n']:>7} {r['seconds']:>8.2f} {pps:>10.2f} "
              f"{r['tokens'] / r['seconds'] if r['seconds'] else 0:>9.1f} "
              f"{(pps / base_pps) if base_pps else 0:>7.2f}x {r['startup']:>10.1f} {100 * r['accuracy']:>7.1f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=40)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--hf-batch", type=int, default=8)
    ap.add_argument("--workers", default="1,2")
    args = ap.parse_args()

    import ray
    from omegaconf import OmegaConf

    from pipelines.config import TinyModelConfig
    from pipelines.models.tiny import build_tiny_model

    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        model_dir = str(build_tiny_model(Path(tmp) / "tiny", OmegaConf.structured(TinyModelConfig),
                                         max_pixels=MAX_PIXELS))
        records = make_records(args.prompts)
        print(f"{len(records)} prompts, greedy, max {args.max_new_tokens} new tokens, {cores} CPU cores", flush=True)
        results = [bench_hf(model_dir, records, args.max_new_tokens, args.hf_batch, cores)]
        print(f"HF done: {results[-1]['seconds']:.1f} s", flush=True)
        ray.init(num_cpus=max(cores, 2), include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
        try:
            for R in [int(x) for x in args.workers.split(",") if x.strip()]:
                results.append(bench_vllm(model_dir, records, args.max_new_tokens, R))
                print(f"vLLM R={R} done: {results[-1]['seconds']:.1f} s", flush=True)
        finally:
            ray.shutdown()
    print()
    print_table(results, results[0])


if __name__ == "__main__":
    main()
