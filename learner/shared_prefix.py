"""The shared-prefix layout: each prompt (its image included) runs once per micro-batch, however
many of its completions the micro-batch holds.

The G completions of a GRPO group share one prompt, which is most of the tokens. Per-sample rows
(``learner/policy.py`` ``build_inputs``) recompute it G times in the forward, the backward and the
reference forward. Here a micro-batch runs in two forwards:

1. the prefixes: one row per distinct prompt, all of it but its last token, right-padded, with the
   image (vision tower once per prompt) and M-RoPE positions from the model's own ``get_rope_index``;
   the model returns its KV cache;
2. the completions: the cache is indexed by each sample's prompt (``index_select`` on the batch axis,
   an autograd op: the gradients of all G completions flow back into the one prefix computation),
   and each sample's row ``last prompt token + completion`` runs on it. Its positions continue the
   prompt's: text after the prefix sits at (largest prefix position + 1), the same in all three
   M-RoPE axes, in every supported family. Feeding the last prompt token here means the logits of
   the completion rows are exactly the ones that predict the completion tokens.

The attention mask spans [prefix (padding holes masked) | completion row], so each completion
sees its own prompt and its own earlier tokens, as in its per-sample row: log-probs, losses and
gradients equal the per-sample layout's to float tolerance (``tests/test_shared_prefix.py``).

Gradient checkpointing drops a layer's cache in training mode (transformers replays the layer in
the backward and would write the cache twice), so the policy uses the per-sample layout then.
"""
from __future__ import annotations

import weakref
from typing import Sequence

import torch

from learner.policy import (
    completion_tensors,
    encode_prompts,
    prompt_key,
    token_logprobs,
    vision_token_ids,
)
from learner.samples import TrainSample

_ROPE_OWNERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def group_indices(samples: Sequence[TrainSample]) -> tuple[list[tuple[str, bytes]], list[int]]:
    """Distinct prompt keys in order of first appearance, and each sample's index into them."""
    keys: dict = {}
    index = [keys.setdefault(prompt_key(s), len(keys)) for s in samples]
    return list(keys), index


def build_prefix_inputs(processor, samples: Sequence[TrainSample], pad_id: int,
                        encoded: dict | None = None) -> dict[str, torch.Tensor]:
    """Batch samples in the shared-prefix layout.

    Returns (CPU tensors), besides ``completion_tensors``' keys (what the loss reads):
      input_ids, attention_mask, mm_token_type_ids [N, P']  the N distinct prompts less their last token
      pixel_values, image_grid_thw [N, 3]                    one image per distinct prompt
      tail_ids, tail_mask [B, 1 + T_c]                       last prompt token + completion, right-padded
      group_index [B]                                        each sample's prompt row
      prompt_lengths [B]                                     full prompt lengths (as in the per-sample layout)
    """
    if not samples:
        raise ValueError("build_prefix_inputs needs at least one sample")
    encoded = encode_prompts(processor, samples, encoded)
    keys, index = group_indices(samples)
    rows = [encoded[k] for k in keys]
    for (ids, tt, _, _), k in zip(rows, keys):
        if ids.numel() < 2 or int(tt[-1]) != 0:  # never with a chat template: it ends in text
            raise ValueError(f"a prompt must end in a text token to share its prefix; got {k[0][-80:]!r}")
    out = completion_tensors(samples, torch.tensor(vision_token_ids(processor.tokenizer), dtype=torch.long), pad_id)
    fed = out.pop("fed")
    N = len(rows)
    Pp = max(r[0].numel() for r in rows) - 1
    input_ids = torch.full((N, Pp), int(pad_id), dtype=torch.long)
    attention_mask = torch.zeros((N, Pp), dtype=torch.long)
    mm_token_type_ids = torch.zeros((N, Pp), dtype=torch.long)
    for g, (ids, tt, _, _) in enumerate(rows):
        p = ids.numel() - 1
        input_ids[g, :p] = ids[:p]
        attention_mask[g, :p] = 1
        mm_token_type_ids[g, :p] = tt[:p]
    gi = torch.tensor(index, dtype=torch.long)
    last = torch.stack([r[0][-1] for r in rows])[gi]
    C = out["completion_lengths"]
    tail_ids = torch.cat([last[:, None], fed], dim=1)
    tail_mask = (torch.arange(fed.shape[1] + 1)[None, :] <= C[:, None]).long()
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "mm_token_type_ids": mm_token_type_ids,
        "pixel_values": torch.cat([r[2] for r in rows], dim=0),
        "image_grid_thw": torch.cat([r[3] for r in rows], dim=0),
        "tail_ids": tail_ids,
        "tail_mask": tail_mask,
        "group_index": gi,
        "prompt_lengths": torch.tensor([encoded[prompt_key(s)][0].numel() for s in samples], dtype=torch.long),
        **out,
    }


def _rope_owner(model):
    """The inner module with ``get_rope_index`` (through a DeepSpeed engine and PEFT wrappers), found once."""
    owner = _ROPE_OWNERS.get(model)
    if owner is None:
        owner = next((m for m in model.modules() if callable(getattr(m, "get_rope_index", None))), None)
        if owner is None:
            raise TypeError(f"{type(model).__name__} has no get_rope_index: not a Qwen-VL model")
        _ROPE_OWNERS[model] = owner
    return owner


def prefix_positions(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """M-RoPE positions of the prefix rows [3, N, P'] (the model's own rule) and, per prefix row,
    the position of the next text token (largest position + 1: text continues after the image)."""
    mask = batch["attention_mask"]
    pos, _ = _rope_owner(model).get_rope_index(batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
                                               image_grid_thw=batch["image_grid_thw"], attention_mask=mask)
    pos = pos.to(mask.device)
    nxt = pos.masked_fill(~mask.bool()[None], -1).amax(dim=(0, 2)) + 1
    return pos, nxt


def shared_prefix_logprobs(model, batch: dict[str, torch.Tensor], temperature: float = 1.0,
                           compute_entropy: bool = False):
    """``policy.completion_logprobs`` for a ``build_prefix_inputs`` batch: the same (logp, entropy)."""
    pos, nxt = prefix_positions(model, batch)
    pre = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                mm_token_type_ids=batch["mm_token_type_ids"], pixel_values=batch["pixel_values"],
                image_grid_thw=batch["image_grid_thw"], position_ids=pos, use_cache=True, logits_to_keep=1)
    cache = pre.past_key_values
    if cache is None or cache.get_seq_length() == 0:
        raise RuntimeError("the prefix forward returned no KV cache (gradient checkpointing in training mode "
                           "drops it): use the per-sample layout")
    gi = batch["group_index"]
    cache.batch_select_indices(gi)  # one prefix, G rows: indexing keeps the graph back to the one prefix
    tail = batch["tail_ids"]
    Tc = tail.shape[1] - 1
    tpos = (nxt[gi][:, None] + torch.arange(Tc + 1, device=tail.device)[None, :])[None].expand(3, -1, -1)
    mask = torch.cat([batch["attention_mask"][gi], batch["tail_mask"]], dim=1)
    out = model(input_ids=tail, attention_mask=mask, position_ids=tpos, past_key_values=cache, use_cache=True,
                logits_to_keep=torch.arange(Tc, device=tail.device))
    return token_logprobs(out.logits, batch["completion_ids"], batch["completion_mask"].bool(), temperature,
                          compute_entropy)
