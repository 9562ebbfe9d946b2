"""The closed choices of the configuration, each defined once. OmegaConf refuses any
other value for a field typed with one of these enums, naming the valid ones.

They are ``StrEnum``s: a member is its value wherever a string is expected (f-strings,
JSON, dict keys, comparisons with plain strings), so code never unwraps ``.value``."""
from __future__ import annotations

import enum

from learner.grpo_options import AdvantageScale, KLEstimator, LossAgg, RatioLevel  # noqa: F401  (the GRPO math owns them)
from learner.model_family import ModelFamily  # noqa: F401  (the learner's family table owns it)


class PromptStyle(enum.StrEnum):
    think = "think"
    nothink = "nothink"
    think_after = "think_after"


class DType(enum.StrEnum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class SyncBackend(enum.StrEnum):
    """How learner weights reach the vLLM engines (all through vLLM's weight-transfer API)."""

    auto = "auto"  # shm on a local CPU run (one node), object_store otherwise (config_checks.sync_backend)
    object_store = "object_store"  # through Ray's object store, into each engine in bounded messages
    shm = "shm"  # one node: a /dev/shm segment learner rank 0 writes and every engine maps (no pickling)
    gloo = "gloo"  # broadcast from learner rank 0 over a gloo group: CPU clusters (and CI)
    nccl = "nccl"  # broadcast from learner rank 0 over NCCL: GPUs, rollout and learner on separate devices
    ipc = "ipc"  # CUDA IPC handles: colocated GPUs (the learner and an engine on the same device)


class CpuLinear(enum.StrEnum):
    """How vLLM's linear layers hold their weights on CPU (actors/cpu_weights.py)."""

    plain = "plain"  # as loaded, F.linear: a push copies straight into them (no reload, no repack)
    packed = "packed"  # vLLM's default: repacked for oneDNN, so every push re-runs vLLM's layer-wise reload


class VerifyWhen(enum.StrEnum):
    """When to check that the engines' weights equal the learner's after a push."""

    first = "first"  # the first push, and the first after an engine rejoins
    every = "every"
    off = "off"


class Placement(enum.StrEnum):
    PACK = "PACK"
    SPREAD = "SPREAD"
    STRICT_PACK = "STRICT_PACK"
    STRICT_SPREAD = "STRICT_SPREAD"


class OptionOrder(enum.StrEnum):
    shuffled = "shuffled"  # the answer at a balanced random letter, as in Med-R1's data
    fixed = "fixed"  # options in their category's order (e.g. Grade 0..3)
    canonical = "canonical"  # every class of the category, in its order: a class always has one letter


class OnBadRecord(enum.StrEnum):
    error = "error"
    skip = "skip"


class LRSchedule(enum.StrEnum):
    constant = "constant"  # after the warm-up, if any
    cosine = "cosine"
    linear = "linear"


class DistBackend(enum.StrEnum):
    auto = "auto"  # nccl with GPUs, gloo without
    gloo = "gloo"
    nccl = "nccl"


class DataSource(enum.StrEnum):
    synthetic = "synthetic"  # built locally by the project (the default run)
    prepared = "prepared"  # data.prepared_dir written by `medr1 prepare-data`


class Tracker(enum.StrEnum):
    tensorboard = "tensorboard"  # <output_dir>/tensorboard
    wandb = "wandb"  # optional extra (requirements/trackers.txt)
    mlflow = "mlflow"  # optional extra (requirements/trackers.txt)


# The module each optional tracker imports and the pip distribution that provides it.
TRACKER_PACKAGES = {"wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow-skinny")}


class WandbMode(enum.StrEnum):
    offline = "offline"  # files under <output_dir>/wandb; `wandb sync` uploads them later
    online = "online"  # needs the network and a W&B login


class WarmstartReasoning(enum.StrEnum):
    fixed = "fixed"  # sft.reasoning, the same sentence for every record
    own_caption = "own_caption"  # the base model's own description of the image (its words, no labels)
    # the base's own answer to the pretraining reading instruction on the record's option list: its
    # description, then the listed term it names and that term's letter (its words, no labels)
    own_reading = "own_reading"


class SFTTarget(enum.StrEnum):
    answer = "answer"  # the ground-truth letter: the paper's SFT baseline
    format = "format"  # a random option letter: the format warm-start
