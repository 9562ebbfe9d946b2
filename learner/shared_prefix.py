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

Gradient checkpointing: transformers replays a checkpointed layer in the backward, so a cache it
wrote to would be written twice (and it drops the cache of such layers unless they declare they
only read it). Here neither cache grows on a replay: the prefix cache keeps a layer's K/V the first
time and the tails' cache joins the prefix with the tail without storing anything, so the layers
are marked as readers and the layout works with checkpointing too.
"""
from __future__ import annotations

import weakref
from typing import Sequence

import torch
from transformers import DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer

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


class _WriteOnceCache(DynamicCache):
    """The prefix forward's cache: a layer's K/V are kept the first time; a replay leaves them."""

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if layer_idx < len(self.layers) and self.layers[layer_idx].get_seq_length() > 0:
            return key_states, value_states
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)


class _PrefixView(DynamicCache):
    """The tails' cache: each layer's prefix K/V (one row per sample) joined with the tail's, nothing stored."""

    def __init__(self, prefix: DynamicCache, index: torch.Tensor):
        # Indexing is an autograd op: the gradients of all of a prompt's tails flow into its one prefix.
        super().__init__([(layer.keys[index], layer.values[index]) for layer in prefix.layers])

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        layer = self.layers[layer_idx]
        return torch.cat([layer.keys, key_states], dim=-2), torch.cat([layer.values, value_states], dim=-2)


def _rope_owner(model):
    """The inner module with ``get_rope_index`` (through a DeepSpeed engine and PEFT wrappers), found once."""
    owner = _ROPE_OWNERS.get(model)
    if owner is None:
        owner = next((m for m in model.modules() if callable(getattr(m, "get_rope_index", None))), None)
        if owner is None:
            raise TypeError(f"{type(model).__name__} has no get_rope_index: not a Qwen-VL model")
        for m in model.modules():  # our caches never grow on a replay: checkpointed layers may keep them
            if isinstance(m, GradientCheckpointingLayer):
                m._can_checkpoint_with_cache = True
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
    cache = _WriteOnceCache()
    model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
          mm_token_type_ids=batch["mm_token_type_ids"], pixel_values=batch["pixel_values"],
          image_grid_thw=batch["image_grid_thw"], position_ids=pos, past_key_values=cache, use_cache=True,
          logits_to_keep=1)
    if cache.get_seq_length() == 0:
        raise RuntimeError("the prefix forward filled no KV cache: this model's layers do not use it")
    gi = batch["group_index"]
    tail = batch["tail_ids"]
    Tc = tail.shape[1] - 1
    tpos = (nxt[gi][:, None] + torch.arange(Tc + 1, device=tail.device)[None, :])[None].expand(3, -1, -1)
    mask = torch.cat([batch["attention_mask"][gi], batch["tail_mask"]], dim=1)
    out = model(input_ids=tail, attention_mask=mask, position_ids=tpos, past_key_values=_PrefixView(cache, gi),
                use_cache=True,
                logits_to_keep=torch.arange(Tc, device=tail.device))
    return token_logprobs(out.logits, batch["completion_ids"], batch["completion_mask"].bool(), temperature,
                          compute_entropy)
