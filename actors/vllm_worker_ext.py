"""Methods added to every vLLM worker (``worker_extension_cls``) so the learner
can replace the weights of a running engine.

Names start with ``medr1_`` because an extension may not redefine methods the
worker already has (``update_weights`` exists). The receiving halves of the
weight-sync backends live in ``actors/weight_sync.py``; these methods only
forward to them.
"""
from __future__ import annotations

import hashlib

import torch

from actors.weight_sync import NCCLWeightReceiver, receive_safetensors


class MedR1WorkerExtension:
    def medr1_load_safetensors(self, payload: bytes) -> int:
        return receive_safetensors(self.model_runner, payload)

    def medr1_weight_checksum(self) -> str:
        """A digest of every parameter, to check that a push landed."""
        h = hashlib.sha256()
        for name, p in sorted(self.model_runner.model.named_parameters()):
            h.update(name.encode())
            h.update(p.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def medr1_init_weight_group(self, master_address: str, master_port: int, rank_offset: int, world_size: int) -> None:
        self._medr1_receiver = NCCLWeightReceiver(self.device, master_address, master_port, rank_offset, world_size)

    def medr1_receive_broadcast(self, specs: list[tuple[str, str, list[int]]]) -> int:
        return self._medr1_receiver.receive(self.model_runner, specs)
