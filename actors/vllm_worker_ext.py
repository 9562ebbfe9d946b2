"""Methods added to every vLLM worker (``worker_extension_cls``) so the learner
can replace the weights of a running engine.

Names start with ``medr1_`` because an extension may not redefine methods the
worker already has (``update_weights`` exists). ``collective_rpc`` serialises
its arguments, so the CPU path ships tensors as safetensors bytes; the GPU
path receives them by NCCL broadcast from learner rank 0 instead.
"""
from __future__ import annotations

import hashlib


class MedR1WorkerExtension:
    # --- CPU / fallback path: weights as safetensors bytes -------------------
    def medr1_load_safetensors(self, payload: bytes) -> int:
        from safetensors.torch import load as load_safetensors

        tensors = load_safetensors(payload)
        # reload_weights (not model.load_weights): on CPU the layers are repacked after
        # the first load and lose their weight_loader; reload handles that.
        self.model_runner.reload_weights(weights_iterator=iter(tensors.items()))
        return len(tensors)

    def medr1_weight_checksum(self) -> str:
        """A digest of every parameter, to check that a push landed."""
        import torch

        h = hashlib.sha256()
        for name, p in sorted(self.model_runner.model.named_parameters()):
            h.update(name.encode())
            h.update(p.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def medr1_param_sum(self, name_prefix: str = "") -> float:
        import torch

        total = 0.0
        for name, p in self.model_runner.model.named_parameters():
            if name.startswith(name_prefix):
                total += float(p.detach().to(torch.float64).sum())
        return total

    # --- GPU path: NCCL broadcast from learner rank 0 ------------------------
    def medr1_init_weight_group(self, master_address: str, master_port: int, rank_offset: int, world_size: int) -> None:
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.parallel_state import get_world_group
        from vllm.distributed.utils import StatelessProcessGroup

        rank = get_world_group().rank + rank_offset
        group = StatelessProcessGroup.create(host=master_address, port=master_port, rank=rank, world_size=world_size)
        self._medr1_comm = PyNcclCommunicator(group, device=self.device)

    def medr1_receive_broadcast(self, specs: list[tuple[str, str, list[int]]]) -> int:
        """Receive one bucket: ``specs`` lists (name, dtype, shape) in broadcast order."""
        import torch

        comm = self._medr1_comm
        received = []
        for name, dtype, shape in specs:
            buf = torch.empty(shape, dtype=getattr(torch, dtype), device=self.device)
            comm.broadcast(buf, src=0, stream=torch.cuda.current_stream())
            received.append((name, buf))
        torch.cuda.current_stream().synchronize()
        self.model_runner.model.load_weights(weights=received)
        return len(received)
