"""DeepSpeed checkpoints loaded without running pickled code.

DeepSpeed reads its state files with ``torch.load(..., weights_only=False)``: a state file
from someone else could run any code on load. Every load of this rank's engine goes through
its ``checkpoint_engine.load``, which we replace by a ``weights_only=True`` load that knows
the few DeepSpeed classes its own checkpoints hold (and nothing else)."""
from __future__ import annotations

import pickle

import torch
from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils.tensor_fragment import fragment_address

DEEPSPEED_GLOBALS = [ZeroStageEnum, fragment_address, LossScaler, DynamicLossScaler]


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A state file that would need code (an object not on the allowlist) to load."""


def load_weights_only(path: str, map_location=None):
    try:
        with torch.serialization.safe_globals(DEEPSPEED_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsafeCheckpointError(f"{path}: refused, it holds an object medr1 does not load "
                                    f"(weights_only=True): {first}") from None


def use_weights_only_loads(engine) -> None:
    """Make ``engine`` (a DeepSpeedEngine) load every state file with ``load_weights_only``."""
    engine.checkpoint_engine.load = load_weights_only
