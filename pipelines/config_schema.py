"""The config schema: one typed dataclass per section.

``pipelines/config.py`` loads YAML and ``key=value`` overrides into these; OmegaConf's
struct mode refuses unknown keys and values of the wrong type.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pipelines.choices import (
    AdvantageScale,
    CpuLinear,
    DataSource,
    DistBackend,
    DType,
    KLEstimator,
    LossAgg,
    LRSchedule,
    ModelFamily,
    OnBadRecord,
    OptionOrder,
    Placement,
    PromptStyle,
    RatioLevel,
    SFTTarget,
    SyncBackend,
    Tracker,
    VerifyWhen,
    WandbMode,
    WarmstartReasoning,
)


@dataclass
class Resources:
    """What one worker asks Ray for. ``custom`` holds custom resources or node labels."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    custom: dict[str, float] = field(default_factory=dict)


@dataclass
class TinyModelConfig:
    """Dimensions of the locally built Qwen-VL (head_dim 64: the vLLM CPU attention needs it)."""

    family: ModelFamily = ModelFamily.qwen2_vl  # which generation `build_tiny_if_missing` builds
    seed: int = 0
    vocab_size: int = 2048
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 768
    vision_embed_dim: int = 128
    vision_depth: int = 2
    vision_num_heads: int = 2
    max_position_embeddings: int = 2048


@dataclass
class CaptionPretrainConfig:
    """Perception pretraining of the built tiny model (``pipelines/models/pretrain.py``): next-token
    captioning on a separate pool of synthetic images (other seeds; no benchmark image or question)."""

    enabled: bool = False
    seed: int = 1000
    per_cell: int = 40  # pool images per (modality, question type) scene kind
    steps: int = 600
    batch_size: int = 16
    lr: float = 1.0e-3
    # Share of each batch that is a reading item (pipelines/data/caption_reading.py): the caption,
    # then the letter of the listed term it names; what lets the base match its words to options.
    reading: float = 0.0
    # Text-only reading items added to each batch, as a share of batch_size: a caption given as
    # text, then the term it names and its letter (the matching alone; cheap without an image).
    text_reading: float = 0.0


@dataclass
class ModelConfig:
    path: str = "outputs/tiny-qwen2vl"
    build_tiny_if_missing: bool = True
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    pretrain: CaptionPretrainConfig = field(default_factory=CaptionPretrainConfig)  # with build_tiny_if_missing
    dtype: DType = DType.float32
    attn_implementation: str = "sdpa"  # flash_attention_2 on GPUs
    trust_remote_code: bool = False
    min_pixels: int = 3136
    max_pixels: int = 401408


@dataclass
class SyntheticDataConfig:
    seed: int = 0
    per_cell: int = 12
    image_size: int = 112
    test_fraction: float = 0.2
    option_order: OptionOrder = OptionOrder.shuffled


@dataclass
class DataConfig:
    # "synthetic" builds the built-in benchmark under `prepared_dir` if missing;
    # "prepared" reads a directory written by `medr1 prepare-data`.
    source: DataSource = DataSource.synthetic
    prepared_dir: str = "outputs/data/synthetic"
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)
    train_split: str = "train"
    test_split: str = "test"
    prompt_style: PromptStyle = PromptStyle.think
    modalities: list[str] = field(default_factory=list)  # empty = all
    question_types: list[str] = field(default_factory=list)  # empty = all
    max_prompt_length: int = 1024
    shuffle: bool = True
    seed: int = 0
    on_bad_record: OnBadRecord = OnBadRecord.error


@dataclass
class RolloutConfig:
    num_workers: int = 2
    resources_per_worker: Resources = field(default_factory=Resources)
    group_size: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 256
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.5
    # On CPU vLLM reserves a fraction of host RAM unless told an absolute size.
    kv_cache_memory_bytes: int | None = 268435456
    max_num_seqs: int = 256
    enforce_eager: bool = True
    # Sample the next batches while the learner updates (``rollout.async=true`` works too); samples
    # are then up to ``max_staleness`` weight versions old.
    async_mode: bool = False
    max_staleness: int = 1
    # With cluster.colocate: vLLM sleep level while the learner runs (1: weights to host memory, 2: dropped).
    sleep_level: int = 1
    seed: int = 0
    # On CPU: plain keeps linear weights as loaded, so a weight push is one copy into them; packed is
    # vLLM's oneDNN layout, which each push must rebuild. packed is the default: it samples faster
    # (1.35x at ~60M in bench/bench_push.py), and a step samples for seconds but pushes once.
    cpu_linear: CpuLinear = CpuLinear.packed


@dataclass
class RewardConfig:
    num_workers: int = 1
    # Reward name -> weight; names come from the `rewards` registry.
    functions: dict[str, float] = field(default_factory=lambda: {"format": 1.0, "accuracy_strict": 1.0})


@dataclass
class GRPOConfig:
    advantage_scale: AdvantageScale = AdvantageScale.group
    advantage_eps: float = 1e-4
    beta: float = 0.04
    kl_estimator: KLEstimator = KLEstimator.k3
    kl_clamp: float = 0.0  # > 0 bounds each token's KL estimate (verl: 10); 0 = the paper, none
    clip_low: float = 0.2
    clip_high: float = 0.2
    loss_agg: LossAgg = LossAgg.seq_mean_token_mean
    seq_sum_norm_constant: float = 256.0
    filter_dead_groups: bool = False
    updates_per_batch: int = 1
    # Optimizer steps per pass over a rollout batch: it is split into this many mini-batches
    # (verl's ppo_mini_batch_size, TRL's steps_per_generation). More steps per rollout.
    mini_batches: int = 1
    # GSPO: "sequence" clips one ratio per completion (the geometric mean of its token ratios;
    # TRL's importance_sampling_level). GSPO's clip ranges are narrow, e.g. clip_low 3e-4, clip_high 4e-4.
    ratio_level: RatioLevel = RatioLevel.token
    # DAPO dynamic sampling (pipelines/training/dynamic_sampling.py): while fewer than
    # trainer.prompts_per_step groups have unequal rewards, sample the next prompts, at most
    # dynamic_sampling_max_tries extra rounds; only groups with unequal rewards train. Sync mode only.
    dynamic_sampling: bool = False
    dynamic_sampling_max_tries: int = 3
    # DAPO overlong handling (pipelines/training/overlong.py): leave completions cut at
    # rollout.max_new_tokens out of the loss, and/or a length penalty over the last
    # overlong_buffer tokens before the limit, down to -overlong_penalty (0 = no penalty).
    overlong_filter: bool = False
    overlong_buffer: int = 0
    overlong_penalty: float = 1.0


@dataclass
class LoRAConfig:
    """LoRA on the language model (``learner/lora.py``); pushed to vLLM merged into the base weights."""

    rank: int = 0  # 0: off, full fine-tuning (the paper)
    alpha: float = 16.0  # scale = alpha / rank
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                               "gate_proj", "up_proj", "down_proj"])
    freeze_vision: bool = True  # adapters on the language model only (vLLM's LoRA cannot reach the vision tower)


@dataclass
class LearnerConfig:
    num_workers: int = 1
    resources_per_worker: Resources = field(default_factory=Resources)
    zero_stage: int = 2
    lr: float = 1e-6
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    lr_scheduler: LRSchedule = LRSchedule.constant
    warmup_ratio: float = 0.0
    micro_batch_size: int = 4
    # Micro-batches packed by token count instead (padded tokens of the forward, groups kept whole
    # when they fit); 0: micro_batch_size samples each.
    max_tokens_per_micro_batch: int = 0
    # Each prompt (image included) runs once per micro-batch for all its completions (learner/shared_prefix.py);
    # false: one prompt + completion row per sample.
    shared_prefix: bool = True
    grad_clip: float = 1.0
    bf16: bool = False
    gradient_checkpointing: bool = False
    offload_optimizer: bool = False
    dist_backend: DistBackend = DistBackend.auto
    lora: LoRAConfig = field(default_factory=LoRAConfig)


@dataclass
class WeightSyncConfig:
    # auto: shm on a local CPU run (2-22x faster pushes there, docs/performance.md), object_store otherwise.
    # On every backend a rollout actor that dies during a push is left out of it and caught up after its restart.
    backend: SyncBackend = SyncBackend.auto
    every_n_steps: int = 1
    # The largest message or packed buffer of a push: peak extra memory is about one of these.
    # (shm: one load call per bucket; the segment itself holds the model once, for the run.)
    bucket_size_mb: int = 256
    verify: VerifyWhen = VerifyWhen.first
    # Every wait of a push (rendezvous, broadcast, load) gives up after this long, naming the actor.
    timeout_s: float = 600.0


@dataclass
class ClusterConfig:
    address: str | None = None  # None: start a local Ray; "auto" or ray://host:port to join one
    num_cpus: int | None = None  # local Ray only
    placement_strategy: Placement = Placement.PACK
    colocate: bool = False
    # Async mode on one machine's CPUs: cores for the rollout actors, the rest for the learner
    # ranks (disjoint, so sampling and learning overlap); 0 = half. cluster/cores.py.
    rollout_cores: int = 0
    dashboard_host: str = "127.0.0.1"
    runtime_env_vars: dict[str, str] = field(default_factory=dict)
    # Shared storage every node sees (e.g. /shared/medr1): `medr1 submit` puts outputs and
    # checkpoints there, never in the uploaded working dir.
    storage_path: str | None = None


@dataclass
class TrainerConfig:
    output_dir: str = "outputs/run"
    total_steps: int = 100
    epochs: int = 1
    prompts_per_step: int = 8
    eval_every: int = 0  # 0: only before and after
    save_every: int = 0  # 0: only at the end
    seed: int = 0
    resume_from: str | None = "auto"  # "auto": newest valid checkpoint of output_dir (same settings); a dir; null
    keep_last_n: int = 0  # keep only the newest N step checkpoints (0: all); final is always kept


@dataclass
class LoggingConfig:
    # Where step metrics go besides metrics.jsonl and the Ray dashboard; wandb and mlflow are
    # optional extras (pip install -r requirements/trackers.txt) and get the config, the reward
    # curve and the evaluation tables too.
    trackers: list[Tracker] = field(default_factory=lambda: [Tracker.tensorboard])
    tensorboard: bool = True  # false turns TensorBoard off even when listed (older configs use it)
    project: str = "medr1"  # the W&B project / MLflow experiment; the run is named after output_dir
    wandb_mode: WandbMode = WandbMode.offline
    mlflow_tracking_uri: str = ""  # "": a file store at <output_dir>/mlruns; or a tracking server's URL
    traces: bool = True
    trace_images_max_mb: float = 1024.0  # cap of traces/images/ (each image kept once); 0: keep none
    trace_signing_key: str = ""  # an Ed25519 PEM key file (medr1 trace keygen): sign traces/MANIFEST.json
    ray_metrics: bool = True
    progress: bool = True


@dataclass
class SFTConfig:
    """Supervised fine-tuning on the same learner.

    ``answer`` targets the ground-truth letter (the paper's SFT baseline);
    ``format`` targets a random option letter, teaching the tags while answers
    stay at chance (the warm-start a randomly initialised tiny model needs
    before GRPO, like the instruction tuning a real base model already has).
    """

    target: SFTTarget = SFTTarget.answer
    prompt_style: PromptStyle = PromptStyle.think
    reasoning: str = "I look at the image and the options."
    epochs: float = 1.0
    lr: float = 2e-5
    lr_scheduler: LRSchedule = LRSchedule.cosine
    warmup_ratio: float = 0.1
    batch_size: int = 16
    max_records: int | None = None
    output_dir: str = "outputs/sft"
    # Run a `format` warm-start into this directory before GRPO when it holds no model yet ("" = off).
    warmstart_dir: str = ""
    warmstart_epochs: float = 2.0
    warmstart_lr: float = 1e-3
    # The warm-start's <think> text: a fixed sentence, or the base model's own description of each image.
    warmstart_reasoning: WarmstartReasoning = WarmstartReasoning.fixed


@dataclass
class EvalConfig:
    max_new_tokens: int = 256
    max_samples: int | None = None
    prompt_style: PromptStyle = PromptStyle.think


@dataclass
class MedR1Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    weight_sync: WeightSyncConfig = field(default_factory=WeightSyncConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
