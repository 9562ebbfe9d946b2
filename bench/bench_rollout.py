"""Rollout throughput and weight-push cost, side by side in one run.

For two model sizes (the tiny default and a ~60M-parameter Qwen2-VL with
random weights, where batching matters), on the same image prompts:
  - tokens/s of one vLLM engine sampling G completions per prompt,
  - tokens/s of HF ``generate`` (batched, same sampling settings),
  - seconds and bytes/s to push the full weights into the running engine.

Usage: python bench/bench_rollout.py [--prompts 8] [--group 4] [--tokens 32]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZES = {
    "tiny (default)": {},
    "medium (~60M)": dict(hidden_size=768, num_attention_heads=12, num_key_value_heads=4, intermediate_size=2048,
                          num_hidden_layers=8, vision_embed_dim=256, vision_depth=4, vision_num_heads=4),
}


def _images(n: int) -> list[bytes]:
    import numpy as np
    from PIL import Image

    from learner.image_codec import encode_png

    out = []
    for i in range(n):
        rng = np.random.RandomState(i)
        out.append(encode_png(Image.fromarray((rng.rand(112, 112, 3) * 255).astype("uint8"))))
    return out


def bench_size(name: str, dims: dict, args) -> dict:
    import torch
    from omegaconf import OmegaConf
    from safetensors.torch import load_file, save
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    from actors.vllm_engine import RolloutEngine
    from learner.image_codec import decode_image
    from pipelines.config import TinyModelConfig
    from pipelines.models.tiny import build_tiny_model
    from pipelines.prompts import chat_prompt

    tiny = OmegaConf.structured(TinyModelConfig)
    for k, v in dims.items():
        tiny[k] = v
    d = Path(tempfile.mkdtemp(prefix="bench-model-"))
    build_tiny_model(d, tiny, max_pixels=112 * 112)
    proc = AutoProcessor.from_pretrained(d)
    rec = {"question": "What imaging modality is shown?", "options": ["CT", "MRI", "X-ray", "OCT"]}
    text = chat_prompt(proc, rec)
    images = _images(args.prompts)
    prompts = [{"id": str(i), "prompt": text, "image": img} for i, img in enumerate(images)]
    sampling = dict(n=args.group, temperature=1.0, max_tokens=args.tokens)

    # HF generate: the whole batch (prompts x G) at once, sampling, no early stop so token counts match.
    model = Qwen2VLForConditionalGeneration.from_pretrained(d, dtype=torch.float32).eval()
    n_params = sum(p.numel() for p in model.parameters())
    pil = [decode_image(b) for b in images for _ in range(args.group)]
    enc = proc(text=[text] * len(pil), images=pil, return_tensors="pt", padding=True)
    with torch.no_grad():
        t = time.perf_counter()
        out = model.generate(**enc, max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=True,
                             temperature=1.0, top_k=0)
        hf_s = time.perf_counter() - t
    hf_tokens = (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]
    del model

    t = time.perf_counter()
    engine = RolloutEngine(str(d), max_model_len=1024, kv_cache_memory_bytes=256 << 20, max_pixels=112 * 112)
    start_s = time.perf_counter() - t
    engine.generate(prompts[:1], n=1, max_tokens=4)  # warm-up
    t = time.perf_counter()
    res = engine.generate(prompts, **sampling)
    vllm_s = time.perf_counter() - t
    vllm_tokens = sum(len(c.token_ids) for r in res for c in r.completions)

    sd = load_file(str(d / "model.safetensors"))
    payload = save({k: v * 1.001 for k, v in sd.items()})
    t = time.perf_counter()
    engine.load_safetensors(payload)
    push_s = time.perf_counter() - t
    return {"model": name, "params_m": n_params / 1e6, "hf_tok_s": hf_tokens / hf_s,
            "vllm_tok_s": vllm_tokens / vllm_s, "speedup": (vllm_tokens / vllm_s) / (hf_tokens / hf_s),
            "engine_start_s": start_s, "push_mb": len(payload) / 2**20, "push_s": push_s,
            "push_mb_s": len(payload) / 2**20 / push_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--sizes", nargs="*", default=list(SIZES))
    args = ap.parse_args()
    from actors.vllm_engine import cpu_engine_env

    os.environ.update(cpu_engine_env(f"0-{(os.cpu_count() or 1) - 1}"))
    rows = [bench_size(n, SIZES[n], args) for n in args.sizes]
    print(f"\nrollout: {args.prompts} image prompts x G={args.group} x {args.tokens} new tokens, "
          f"{os.cpu_count()} CPU cores, float32")
    hdr = (f"{'model':<16}{'params':>8}{'HF tok/s':>10}{'vLLM tok/s':>12}{'speedup':>9}{'engine start':>14}"
           f"{'push MB':>9}{'push s':>8}{'push MB/s':>11}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['model']:<16}{r['params_m']:>7.1f}M{r['hf_tok_s']:>10.0f}{r['vllm_tok_s']:>12.0f}"
              f"{r['speedup']:>8.1f}x{r['engine_start_s']:>13.1f}s{r['push_mb']:>9.1f}{r['push_s']:>8.2f}"
              f"{r['push_mb_s']:>11.0f}")


if __name__ == "__main__":
    main()
