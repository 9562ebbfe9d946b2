"""`medr1 generate`: sample a group of completions for one image prompt through vLLM."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from learner.image_codec import encode_png, read_image_bytes
from pipelines.errors import UserError
from pipelines.prompts import chat_prompt


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="sample G completions for an image + question through vLLM")
    p.add_argument("--model", required=True, help="HF-format Qwen-VL directory (Qwen2-VL, Qwen2.5-VL or Qwen3-VL)")
    p.add_argument("--image", help="image file (default: a drawn test pattern)")
    p.add_argument("--question", default="What imaging modality is shown?")
    p.add_argument("--options", nargs="+", default=["CT", "MRI", "X-ray", "OCT"])
    p.add_argument("--style", default="think", help="prompt style: think, nothink or think_after")
    p.add_argument("-n", type=int, default=4, help="completions in the group")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-pixels", type=int, default=12544)
    p.set_defaults(func=run)


def _default_image() -> bytes:
    import numpy as np  # on use, like the handlers' imports: `medr1 --help` stays instant
    from PIL import Image

    yy, xx = np.mgrid[0:112, 0:112]
    ring = (np.abs(np.hypot(yy - 56, xx - 56) - 40) < 4) * 200 + 40
    return encode_png(Image.fromarray(ring.astype("uint8")).convert("RGB"))


def run(args: argparse.Namespace) -> int:
    # Imported on use: it pulls in Ray, torch and vLLM, and `medr1 --help` must stay instant.
    from actors.vllm_engine import RolloutEngine, cpu_engine_env

    if args.image:
        try:
            image = read_image_bytes(Path(args.image))
        except ValueError as e:
            raise UserError(str(e)) from None
    else:
        image = _default_image()
    for k, v in cpu_engine_env().items():
        os.environ.setdefault(k, v)
    engine = RolloutEngine(args.model, max_model_len=2048, kv_cache_memory_bytes=256 << 20,
                           max_pixels=args.max_pixels, seed=args.seed)
    prompt = chat_prompt(engine.tokenizer, {"question": args.question, "options": args.options}, args.style)
    [result] = engine.generate([{"id": "q", "prompt": prompt, "image": image}], n=args.n,
                               temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed)
    if result.error:
        raise UserError(result.error)
    print(f"prompt ({len(result.prompt_token_ids)} tokens, image included):\n{prompt}\n")
    for k, c in enumerate(result.completions):
        mean_lp = sum(c.logprobs) / max(len(c.logprobs), 1)
        print(f"--- completion {k} ({len(c.token_ids)} tokens, mean log-prob {mean_lp:.2f}, {c.finish_reason})")
        print(c.text)
    return 0
