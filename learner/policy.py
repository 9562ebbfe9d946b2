"""Qwen-VL policy helpers: load, batch ``TrainSample``s, completion log-probs, vLLM weight names.

Every family (``learner/model_family.py``) goes through the same code: the auto classes load
the class the checkpoint's config names, and each model computes its own M-RoPE positions
from ``input_ids``, ``image_grid_thw``, ``mm_token_type_ids`` and the attention mask.

The per-sample layout (``learner.shared_prefix=false``; the default shares each prompt over its
completions, ``learner/shared_prefix.py``) is RIGHT-padded: row i is
``prompt_i (image pads expanded) + completion_i + pad``.
Only the logits that predict completion tokens are materialised: the model is asked for
the positions ``[min_i P_i - 1, max_i (P_i + C_i) - 1)`` (``logits_to_keep`` as an index
tensor), and each row's own window is gathered from that slice. With prompts of similar
length this is ~T_c positions instead of the full prompt + completion.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from learner import lora
from learner.image_codec import decode_image
from learner.model_family import family_of
from learner.samples import TrainSample
from learner.weight_names import checkpoint_names

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
           "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    name = getattr(dtype, "value", dtype)
    try:
        return _DTYPES[str(name)]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}") from None


# Qwen-VL's vision special tokens. A policy may sample them (untrained or drifting), but inside a
# completion they would be read as image placeholders: one more <|image_pad|> than the image has
# features fails the forward ("Image features and image tokens do not match"). vLLM is told never
# to sample them; should one appear anyway, the learner neither feeds it as a placeholder nor trains on it.
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def vision_token_ids(tokenizer) -> list[int]:
    """Ids of the vision special tokens this tokenizer has (added tokens: no walk over the whole vocabulary)."""
    added = tokenizer.added_tokens_encoder
    return sorted(added[t] for t in VISION_TOKENS if t in added)


def load_policy(path: str, dtype="float32", attn_implementation: str = "sdpa"):
    """The checkpoint's own ``*ForConditionalGeneration`` class; a family we do not support is refused."""
    family_of(path)  # before the load: a clear error instead of a failed or wrong load
    return AutoModelForImageTextToText.from_pretrained(
        path, dtype=resolve_dtype(dtype), attn_implementation=attn_implementation, trust_remote_code=False,
        use_safetensors=True)  # never unpickle a .bin beside (or instead of) the safetensors


def load_processor(path: str):
    return AutoProcessor.from_pretrained(path, trust_remote_code=False)


def prompt_key(sample: TrainSample) -> tuple[str, bytes]:
    """Samples with the same key share their whole prompt, image included (the G completions of a group)."""
    return sample.prompt_text, sample.image


def encode_prompts(processor, samples: Sequence[TrainSample], cache: Optional[dict] = None) -> dict:
    """prompt key -> (input_ids [P], mm_token_type_ids [P], pixel_values, image_grid_thw), each prompt encoded once.

    ``cache`` (filled in place) lets a caller that already encoded some prompts (to count their
    tokens) skip the image processor the second time."""
    cache = {} if cache is None else cache
    for s in samples:
        key = prompt_key(s)
        if key in cache:
            continue
        enc = processor(text=[s.prompt_text], images=[decode_image(s.image)], return_tensors="pt")
        ids = enc["input_ids"][0]
        tt = enc.get("mm_token_type_ids")
        cache[key] = (ids, tt[0] if tt is not None else torch.zeros_like(ids), enc["pixel_values"],
                      enc["image_grid_thw"])
    return cache


def completion_tensors(samples: Sequence[TrainSample], vision_ids: torch.Tensor, pad_id: int) -> dict:
    """The completion side of a batch, the same in every layout (what the loss reads).

    completion_ids, completion_mask, old_logprobs [B, T_c]; advantages, completion_lengths [B];
    fed [B, T_c]: the ids the model reads (sampled vision tokens as pad); vision_tokens [].
    """
    B = len(samples)
    C = torch.tensor([len(s.completion_ids) for s in samples], dtype=torch.long)
    Tc = max(int(C.max()), 1)
    completion_ids = torch.full((B, Tc), int(pad_id), dtype=torch.long)
    fed = torch.full((B, Tc), int(pad_id), dtype=torch.long)
    completion_mask = torch.zeros((B, Tc), dtype=torch.float32)
    old_logprobs = torch.zeros((B, Tc), dtype=torch.float32)
    vision_tokens = 0
    for i, s in enumerate(samples):
        comp = torch.tensor(s.completion_ids, dtype=torch.long)
        c = comp.numel()
        vision = torch.isin(comp, vision_ids)  # sampled vision tokens: not placeholders, not trained on
        vision_tokens += int(vision.sum())
        completion_ids[i, :c] = comp
        fed[i, :c] = comp.masked_fill(vision, int(pad_id))
        completion_mask[i, :c] = (~vision).float()
        old_logprobs[i, :c] = torch.tensor(s.old_logprobs, dtype=torch.float32)
    return {"completion_ids": completion_ids, "completion_mask": completion_mask, "old_logprobs": old_logprobs,
            "advantages": torch.tensor([float(s.advantage) for s in samples], dtype=torch.float32),
            "completion_lengths": C, "fed": fed, "vision_tokens": torch.tensor(vision_tokens)}


def build_inputs(processor, samples: Sequence[TrainSample], pad_id: int,
                 encoded: Optional[dict] = None) -> dict[str, torch.Tensor]:
    """Batch samples for one forward pass, one row per sample (the per-sample layout).

    Returns (CPU tensors):
      input_ids, attention_mask, mm_token_type_ids  [B, L]  prompt + completion, right-padded
      pixel_values [sum patches, D], image_grid_thw [B, 3]
      completion_ids, completion_mask, old_logprobs [B, T_c]  (T_c = longest completion)
      advantages [B], prompt_lengths [B], completion_lengths [B]
      vision_tokens []  vision special tokens found in the completions (fed as pad, masked out)
    """
    if not samples:
        raise ValueError("build_inputs needs at least one sample")
    encoded = encode_prompts(processor, samples, encoded)
    rows = [encoded[prompt_key(s)] for s in samples]
    out = completion_tensors(samples, torch.tensor(vision_token_ids(processor.tokenizer), dtype=torch.long), pad_id)
    fed = out.pop("fed")
    B = len(samples)
    P = torch.tensor([r[0].numel() for r in rows], dtype=torch.long)
    C = out["completion_lengths"]
    L = int((P + C).max())
    input_ids = torch.full((B, L), int(pad_id), dtype=torch.long)
    attention_mask = torch.zeros((B, L), dtype=torch.long)
    mm_token_type_ids = torch.zeros((B, L), dtype=torch.long)
    for i, (ids, tt, _, _) in enumerate(rows):
        p, c = ids.numel(), int(C[i])
        input_ids[i, :p] = ids
        input_ids[i, p:p + c] = fed[i, :c]
        attention_mask[i, :p + c] = 1
        mm_token_type_ids[i, :p] = tt
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "mm_token_type_ids": mm_token_type_ids,
        "pixel_values": torch.cat([r[2] for r in rows], dim=0),
        "image_grid_thw": torch.cat([r[3] for r in rows], dim=0),
        "prompt_lengths": P,
        **out,
    }


MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw")


def to_device(batch: dict[str, torch.Tensor], device, float_dtype: Optional[torch.dtype] = None):
    out = {}
    for k, v in batch.items():
        v = v.to(device)
        if k == "pixel_values" and float_dtype is not None:
            v = v.to(float_dtype)
        out[k] = v
    return out


def completion_logprobs(model, batch: dict[str, torch.Tensor], temperature: float = 1.0,
                        compute_entropy: bool = False):
    """Log-prob of each completion token under ``model`` (an HF model or a DeepSpeed engine).

    Returns (logp [B, T_c] float32, entropy [B, T_c] float32 or None). Padded positions are 0.
    Gradients flow into ``logp`` (call under ``torch.no_grad()`` for reference/old log-probs);
    entropy is always computed without gradient.
    """
    P, C = batch["prompt_lengths"], batch["completion_lengths"]
    comp = batch["completion_ids"]
    mask = batch["completion_mask"].bool()
    Tc = comp.shape[1]
    device = comp.device
    # Logits at position t predict token t+1: completion token j of row i is predicted at P_i - 1 + j.
    lo = int((P - 1).min())
    hi = max(int((P + C).max()) - 1, lo + 1)
    keep = torch.arange(lo, hi, device=device)
    out = model(**{k: batch[k] for k in MODEL_INPUT_KEYS}, logits_to_keep=keep, use_cache=False)
    logits = out.logits  # [B, hi - lo, V]
    W = logits.shape[1]
    idx = (P.to(device) - 1 - lo)[:, None] + torch.arange(Tc, device=device)[None, :]
    idx = idx.clamp(0, W - 1)
    logits = torch.gather(logits, 1, idx[:, :, None].expand(-1, -1, logits.shape[-1]))
    return token_logprobs(logits, comp, mask, temperature, compute_entropy)


def token_logprobs(logits, comp, mask, temperature: float = 1.0, compute_entropy: bool = False):
    """log p(comp) and (no-grad) entropy from the logits that predict each completion token [B, T_c, V]."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    lse = torch.logsumexp(logits, dim=-1)
    tok = torch.gather(logits, 2, comp[:, :, None]).squeeze(-1)
    logp = torch.where(mask, tok - lse, torch.zeros_like(lse))
    entropy = None
    if compute_entropy:
        with torch.no_grad():
            probs = torch.softmax(logits.detach(), dim=-1)
            ent = lse.detach() - (probs * logits.detach()).sum(-1)
            entropy = torch.where(mask, ent, torch.zeros_like(ent))
    return logp, entropy


# -----------------------------------------------------------------------------
# names: in-memory -> checkpoint / vLLM


def checkpoint_name_map(model) -> dict[str, str]:
    """In-memory name -> checkpoint name for every parameter (``learner/weight_names.py``), computed once."""
    cached = getattr(model, "_medr1_checkpoint_names", None)
    if cached is None:
        cached = checkpoint_names(model, [n for n, _ in model.named_parameters()])
        model._medr1_checkpoint_names = cached
    return cached


def is_tied(model) -> bool:
    cfg = getattr(model, "config", None)
    tied = getattr(cfg, "tie_word_embeddings", None)
    if tied is None:
        tied = getattr(getattr(cfg, "text_config", None), "tie_word_embeddings", False)
    return bool(tied)


def exported_parameters(model):
    """(in-memory name, checkpoint name, parameter) for every weight a checkpoint stores.

    Tied ``lm_head.weight`` is not stored (the saved checkpoint omits it; vLLM ties it itself).
    Under LoRA: the base weights with the adapters merged in, under the base names (``learner/lora.py``).
    """
    if lora.is_lora(model):
        yield from lora.merged_parameters(model)
        return
    tied = is_tied(model)
    names = checkpoint_name_map(model)
    for name, p in model.named_parameters():  # de-duplicated: a tied head appears once
        ck = names[name]
        if tied and ck == "lm_head.weight":
            continue
        yield name, ck, p


def vllm_state_dict(model) -> dict[str, torch.Tensor]:
    """Full weights under checkpoint/vLLM names, as contiguous CPU tensors (non-partitioned models)."""
    return {ck: p.detach().to("cpu").contiguous().clone() for _, ck, p in exported_parameters(model)}
