"""Checkpoint (= vLLM) weight names for the learner's in-memory parameters.

transformers 5 renames some families' weights on load (Qwen2-VL and Qwen2.5-VL: ``model.X``
-> ``model.language_model.X``, ``visual.X`` -> ``model.visual.X``) and back on save; Qwen3-VL
checkpoints already use the in-memory names. Rather than hand-written prefixes, the names
here come from transformers' own conversion mapping for the model, reversed, as
``save_pretrained`` does: a push and a saved checkpoint always name a tensor the same way,
and vLLM's name mapper for the family takes it from there.
"""
from __future__ import annotations

from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.core_model_loading import (
    PrefixChange,
    WeightConverter,
    WeightRenaming,
    rename_source_key,
)


def save_renamings(model) -> list[WeightRenaming]:
    """The renamings ``save_pretrained`` applies to this model's parameter names (in-memory -> checkpoint).

    Mirrors transformers' ``revert_weight_conversion``: the conversions the model was loaded with (or
    its registered ones, minus prefix changes, for a model built in memory), reversed. Conversions
    that fuse or split tensors are refused: a push sends one checkpoint tensor per parameter."""
    conversions = getattr(model, "_weight_conversions", None)
    if conversions is None:
        conversions = [c for c in get_model_conversion_mapping(model, add_legacy=False)
                       if not isinstance(c, PrefixChange)]
    reverse = [c.reverse_transform() for c in conversions[::-1]]
    fusing = [c for c in reverse if isinstance(c, WeightConverter)]
    if fusing:
        raise NotImplementedError(f"{type(model).__name__}: weight conversions that fuse tensors are not supported "
                                  f"for pushes ({fusing[0].source_patterns})")
    return [c for c in reverse if isinstance(c, WeightRenaming)]


def checkpoint_names(model, names) -> dict[str, str]:
    """In-memory parameter name -> the name ``save_pretrained`` (and so vLLM) uses for it."""
    renamings = save_renamings(model)
    return {n: rename_source_key(n, renamings, [], reverse=True)[0] for n in names}
