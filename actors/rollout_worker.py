"""Ray actor owning one vLLM engine: samples groups and takes weight pushes."""
from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any, Optional

import ray

from actors.vllm_engine import RolloutEngine


class RolloutWorker:
    def __init__(self, index: int, engine_kwargs: dict[str, Any], weight_version: int = 0,
                 initial_weights=None):
        self.index = index
        self.engine = RolloutEngine(**engine_kwargs)
        self.weight_version = weight_version
        if initial_weights is not None:
            # A restarted or late-joining worker catches up with the learner before it samples.
            self.load_weights(initial_weights, weight_version)

    def ready(self) -> dict:
        import os
        import socket

        return {"index": self.index, "node": ray.get_runtime_context().get_node_id(),
                "host": socket.gethostname(), "pid": os.getpid(), "weight_version": self.weight_version}

    def generate(self, prompts: list[dict], sampling: dict[str, Any]) -> dict:
        t0 = time.perf_counter()
        results = self.engine.generate(prompts, **sampling)
        seconds = time.perf_counter() - t0
        tokens = sum(len(c.token_ids) for r in results for c in r.completions)
        return {
            "results": [asdict(r) for r in results],
            "weight_version": self.weight_version,
            "worker": self.index,
            "seconds": seconds,
            "tokens": tokens,
            "batch_retries": self.engine.batch_retries,
        }

    def load_weights(self, payload, version: int) -> dict:
        """``payload``: a {name: tensor} state dict in vLLM names, or safetensors bytes."""
        t0 = time.perf_counter()
        if isinstance(payload, dict):
            from safetensors.torch import save

            # collective_rpc pickles its arguments; safetensors bytes are the portable form.
            payload = save({k: v.contiguous() for k, v in payload.items()})
        n = self.engine.load_safetensors(payload)
        self.weight_version = version
        return {"tensors": n, "bytes": len(payload), "seconds": time.perf_counter() - t0, "version": version}

    # Colocated mode (see pipelines/colocate.py)
    def sleep(self, level: int = 1) -> dict:
        t0 = time.perf_counter()
        self.engine.sleep(level)
        return {"seconds": time.perf_counter() - t0, "frees_memory": self.engine.sleep_frees_memory}

    def wake_up(self, tags: Optional[list[str]] = None) -> bool:
        return self.engine.wake_up(tags)

    def is_sleeping(self) -> bool:
        return self.engine.is_sleeping()

    def get_weight_version(self) -> int:
        return self.weight_version

    def weight_checksum(self) -> str:
        return self.engine.weight_checksum()

    # GPU weight path (see actors/weight_sync.py)
    def init_weight_group(self, master_address: str, master_port: int, rank_offset: int, world_size: int) -> None:
        self.engine.init_weight_group(master_address, master_port, rank_offset, world_size)

    def receive_broadcast(self, specs: list, version: Optional[int] = None) -> int:
        n = self.engine.receive_broadcast(specs)
        if version is not None:
            self.engine.reset_cache()
            self.weight_version = version
        return n


RolloutActor = ray.remote(RolloutWorker)
