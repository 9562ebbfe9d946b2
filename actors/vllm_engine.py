"""One vLLM engine serving Qwen2-VL with images, plus weight reload.

Plain Python (no Ray) so it can be used directly by benchmarks and tests; the
rollout actor is a thin shell around it.
"""
from __future__ import annotations

import logging
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Optional

from actors import cpu_weights
from actors.weight_stream import DEFAULT_CHUNK_BYTES, stream_messages
from learner.image_codec import decode_image
from learner.policy import vision_token_ids

log = logging.getLogger(__name__)

WORKER_EXTENSION = "actors.vllm_worker_ext.MedR1WorkerExtension"
# weight_sync.backend -> the vLLM weight-transfer engine each rollout engine is built with.
# (The names of actors/transfer_engines.py and actors/transfer_shm.py, which register themselves in every
# vLLM worker through the worker extension; importing them here would load vLLM in the driver.)
TRANSFER_ENGINES = {"object_store": "medr1_stream", "shm": "medr1_shm", "gloo": "medr1_gloo", "nccl": "nccl",
                    "ipc": "ipc"}

# vLLM loggers that repeat the same lines on every weight push (which layers had nothing to
# reload, how long the reload took, the prefix cache reset) or every image (on CPU: "doesn't allow
# to use torch.set_num_threads after the thread binding"): each line is shown the first time only.
_PER_PUSH_LOGGERS = ("vllm.model_executor.model_loader.reload.layerwise",
                     "vllm.model_executor.model_loader.reload.inplace", "vllm.v1.core.block_pool",
                     "vllm.v1.worker.cpu_worker")


class _FirstTimeOnly(logging.Filter):
    def __init__(self):
        super().__init__()
        self.seen: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, re.sub(r"\d+(\.\d+)?", "#", record.getMessage()))  # "took 0.06 s" = "took 0.33 s"
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def quiet_per_push_logs() -> None:
    once = _FirstTimeOnly()
    for name in _PER_PUSH_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _FirstTimeOnly) for f in logger.filters):
            logger.addFilter(once)


@dataclass
class Completion:
    token_ids: list[int]
    text: str
    logprobs: list[float]  # sampling log-prob of each generated token
    finish_reason: str


@dataclass
class PromptResult:
    """All completions for one prompt, or why there are none."""

    prompt_id: str
    completions: list[Completion] = field(default_factory=list)
    prompt_token_ids: list[int] = field(default_factory=list)
    error: Optional[str] = None


def cpu_engine_env(cores: Optional[str] = None) -> dict[str, str]:
    """Environment for vLLM on CPU: compute on every given core, run the engine in-process.

    vLLM CPU reserves a core for itself by default and spawns an engine process and a
    worker process (~40 s of imports each on 2 cores); in-process with the "uni"
    executor it starts in about a third of the time.
    """
    env = {
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    }
    if cores:
        env["VLLM_CPU_OMP_THREADS_BIND"] = cores
    return env


class RolloutEngine:
    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "float32",
        max_model_len: int = 2048,
        seed: int = 0,
        enforce_eager: bool = True,
        gpu_memory_utilization: float = 0.5,
        kv_cache_memory_bytes: Optional[int] = None,
        max_num_seqs: int = 256,
        tensor_parallel_size: int = 1,
        min_pixels: int = 3136,
        max_pixels: int = 401408,
        trust_remote_code: bool = False,
        enable_sleep: bool = False,
        weight_sync: str = "object_store",
        cpu_linear: str = "packed",
    ):
        # vLLM is imported in the rollout actor's process only: the driver never needs it.
        from vllm import LLM
        from vllm.platforms import current_platform

        self.max_pixels = max_pixels
        self.weight_sync = weight_sync
        quiet_per_push_logs()
        if current_platform.is_cpu():  # before the model is built (worker processes read it from the env)
            cpu_weights.keep_plain(cpu_linear == cpu_weights.PLAIN)
        kwargs: dict[str, Any] = dict(
            model=model_path,
            dtype=dtype,
            max_model_len=max_model_len,
            seed=seed,
            enforce_eager=enforce_eager,
            max_num_seqs=max_num_seqs,
            tensor_parallel_size=tensor_parallel_size,
            limit_mm_per_prompt={"image": 1, "video": 0},
            mm_processor_kwargs={"min_pixels": min_pixels, "max_pixels": max_pixels},
            worker_extension_cls=WORKER_EXTENSION,
            trust_remote_code=trust_remote_code,
            weight_transfer_config={"backend": TRANSFER_ENGINES[weight_sync]},
        )
        # Colocated mode frees the GPU between rollouts. On CPU vLLM has no sleep mode (the flag is
        # refused); sleep()/wake_up() then only pause scheduling and the memory stays put.
        self.sleep_frees_memory = bool(enable_sleep and current_platform.is_sleep_mode_available())
        if self.sleep_frees_memory:
            kwargs["enable_sleep_mode"] = True
        if current_platform.is_cpu():
            # A chunked prefill discards a sample and rewinds its request's seeded generator;
            # CPU generators cannot rewind ("CPU Generator does not use offset"), which fails
            # the whole batch once a rollout's prompts exceed one scheduling budget.
            kwargs["enable_chunked_prefill"] = False
        # Inside a Ray actor: one process for one device; with tensor parallelism the actor owns all
        # its tp devices in one bundle and vLLM forks a worker per device ("mp"). vLLM's "ray" executor
        # would ask Ray for more GPUs from inside an actor whose bundle already holds them.
        kwargs["distributed_executor_backend"] = "uni" if tensor_parallel_size == 1 else "mp"
        if kv_cache_memory_bytes:
            # On CPU the default reserves a fraction of host RAM and refuses a second engine.
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_memory_bytes)
        else:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        # Never sample a vision special token: inside a completion it would read as an image placeholder.
        self.banned_tokens = {i: -100.0 for i in vision_token_ids(self.tokenizer)}  # -100: vLLM's floor
        self.push_parts: dict[str, float] = {}  # seconds per part of the pushes (take_push_parts)
        self.batch_retries = 0  # batches that failed and were re-run prompt by prompt (slow)

    def generate(
        self,
        prompts: list[dict],
        *,
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = -1,
        max_tokens: int = 256,
        seed: Optional[int] = None,
        logprobs: bool = True,
        use_tqdm: bool = False,
        ban_vision_tokens: bool = True,
    ) -> list[PromptResult]:
        """``prompts``: dicts with ``id``, ``prompt`` (chat template applied) and ``image``.

        A prompt whose image cannot be decoded comes back with ``error`` set and no
        completions; the others are generated as one batch. ``ban_vision_tokens=False``
        lets the policy sample vision special tokens (only tests want that).
        """
        from vllm import SamplingParams

        if self.is_sleeping():  # a paused scheduler would never return
            raise RuntimeError("the vLLM engine is asleep (colocated mode); wake_up() it before generating")
        results = [PromptResult(prompt_id=str(p["id"])) for p in prompts]
        requests, params, index = [], [], []
        for i, p in enumerate(prompts):
            try:
                img = decode_image(p["image"], self.max_pixels)
            except ValueError as e:
                results[i].error = str(e)
                continue
            requests.append({"prompt": p["prompt"], "multi_modal_data": {"image": img}})
            params.append(
                SamplingParams(
                    n=n,
                    temperature=temperature,
                    top_p=top_p,
                    top_k=top_k if top_k > 0 else 0,
                    max_tokens=max_tokens,
                    # Per-prompt seeds make a step's samples reproducible whatever the sharding:
                    # the driver numbers prompts globally ("seed" in the prompt) when it shards.
                    seed=p.get("seed", None if seed is None else seed + i),
                    logprobs=0 if logprobs else None,
                    skip_special_tokens=True,
                    logit_bias=self.banned_tokens if ban_vision_tokens and self.banned_tokens else None,
                )
            )
            index.append(i)
        if not requests:
            return results
        try:
            outputs = self.llm.generate(requests, params, use_tqdm=use_tqdm)
        except Exception as e:
            # One bad prompt fails the whole batch inside vLLM; retry one by one to isolate it.
            log.warning("batch generation failed (%s); retrying prompt by prompt", e)
            self.batch_retries += 1
            self._drop_unfinished()
            outputs = []
            for req, sp, i in zip(requests, params, index):
                try:
                    outputs.extend(self.llm.generate([req], [sp], use_tqdm=False))
                except Exception as e1:
                    self._drop_unfinished()
                    results[i].error = f"generation failed: {type(e1).__name__}: {e1}"
                    outputs.append(None)
        for out, i in zip(outputs, index):
            if out is None:
                continue
            results[i].prompt_token_ids = list(out.prompt_token_ids or [])
            for c in out.outputs:
                lps = []
                if c.logprobs is not None:
                    for tok, entry in zip(c.token_ids, c.logprobs):
                        lps.append(float(entry[tok].logprob))
                results[i].completions.append(
                    Completion(token_ids=list(c.token_ids), text=c.text, logprobs=lps,
                               finish_reason=str(c.finish_reason))
                )
        return results

    def _drop_unfinished(self) -> None:
        """After a failed step the engine still holds the failed requests; a later
        generate would run them again (and fail again). Abort them and clear caches."""
        engine = self.llm.llm_engine
        stale = list(getattr(engine.output_processor, "request_states", {}).keys())
        if stale:
            engine.abort_request(stale, internal=True)
        self.reset_cache()

    # --- colocated mode: give the devices to the learner between rollouts ---
    def sleep(self, level: int = 1) -> None:
        """Level 1: weights to host memory, KV cache dropped; level 2: both dropped (a push reloads them)."""
        self.llm.sleep(level=level)

    def wake_up(self, tags: Optional[list[str]] = None) -> bool:
        """``["weights"]`` first (then push new ones), ``["kv_cache"]`` last, to keep peak memory low."""
        return bool(self.llm.wake_up(tags))

    def is_sleeping(self) -> bool:
        return bool(self.llm.llm_engine.is_sleeping())

    # --- weights: vLLM's weight-transfer calls (actors/transfer_engines.py has our engines) ---
    def init_weight_transfer_engine(self, init_info: dict) -> None:
        self.llm.init_weight_transfer_engine({"init_info": init_info})

    def start_weight_update(self) -> list | None:
        """Open an update. Over shm, also each worker's tensors that need no load (actors/shm_alias.py;
        None: every tensor), so the learner calls the engines only for buckets that need loading."""
        with self._timed("start"):
            self.llm.start_weight_update()
            return self.llm.collective_rpc("medr1_shm_skips") if self.weight_sync == "shm" else None

    def update_weights(self, update_info) -> None:
        with self._timed("load"):
            self.llm.update_weights({"update_info": update_info})

    def finish_weight_update(self, version: int) -> None:
        with self._timed("finish"):
            self.llm.finish_weight_update(weight_version=str(version))
        with self._timed("reset_cache"):
            self.reset_cache()  # vLLM's transfer path leaves caches computed with the old weights

    @contextmanager
    def _timed(self, part: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.push_parts[part] = self.push_parts.get(part, 0.0) + time.perf_counter() - t0

    def take_push_parts(self) -> dict[str, float]:
        """Seconds per part of the pushes since the last call, inside this engine (bench/bench_push.py)."""
        parts, self.push_parts = self.push_parts, {}
        return parts

    def shutdown_weight_transfer_engine(self) -> None:
        if any(self.llm.collective_rpc("medr1_close_open_update")):  # left open by a push that failed
            log.warning("closed a weight update left open by a failed push before releasing the weight group")
        self.llm.shutdown_weight_transfer_engine()

    def weight_version(self) -> int:
        v = self.llm.get_weight_version()
        return int(v) if v not in (None, "") else 0

    def load_state_dict(self, state_dict: dict, version: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
        """The object-store path: the weights enter the engine as messages of at most ``chunk_bytes``."""
        self.start_weight_update()
        for message in stream_messages(state_dict.items(), chunk_bytes):
            self.update_weights(message)
        self.finish_weight_update(version)
        return len(state_dict)

    def weight_stats(self) -> list[dict[str, list[float]]]:
        """Per worker: [sum, sum of squares, numel, rows] of every parameter (actors/weight_verify.py)."""
        return self.llm.collective_rpc("medr1_weight_stats")

    def param_names(self, names: list[str]) -> dict[str, str | None]:
        return self.llm.collective_rpc("medr1_param_names", args=(names,))[0]

    def reset_cache(self) -> None:
        """Forget everything computed with the old weights: cached KV and vision-encoder outputs.

        The worker drops its encoder outputs on reload, but the scheduler still believes
        an image it saw before is cached and would skip encoding it ("Encoder cache miss").
        """
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()
