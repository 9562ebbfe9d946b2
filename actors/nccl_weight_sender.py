"""Learner-rank-0 side of the NCCL weight push (GPU only).

Rank 0 joins one NCCL group with every vLLM worker (it is rank 0 there, the
vLLM workers follow) and broadcasts the policy's parameters bucket by bucket
under their vLLM names; ``actors/vllm_worker_ext.py`` receives them. Written
for ZeRO stages 0-2, where rank 0 holds every parameter in full; a ZeRO-3
learner uses the object-store backend (the config refuses the combination).
"""
from __future__ import annotations

import socket


def free_address() -> tuple[str, int]:
    import ray

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    return ray.util.get_node_ip_address(), port


class NCCLWeightSender:
    def __init__(self, master_address: str, master_port: int, world_size: int):
        import torch
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.utils import StatelessProcessGroup

        group = StatelessProcessGroup.create(host=master_address, port=master_port, rank=0, world_size=world_size)
        self.comm = PyNcclCommunicator(group, device=torch.cuda.current_device())

    @staticmethod
    def bucket_specs(module, bucket_bytes: int) -> list[list[tuple[str, str, list[int]]]]:
        """(vLLM name, dtype, shape) per parameter, grouped so a bucket holds about ``bucket_bytes``."""
        from learner.policy import exported_parameters

        buckets, current, size = [], [], 0
        for _, ck, p in exported_parameters(module):
            nbytes = p.numel() * p.element_size()
            if current and size + nbytes > bucket_bytes:
                buckets.append(current)
                current, size = [], 0
            current.append((ck, str(p.dtype).removeprefix("torch."), list(p.shape)))
            size += nbytes
        if current:
            buckets.append(current)
        return buckets

    def broadcast(self, module, specs: list[tuple[str, str, list[int]]]) -> int:
        """Send one bucket in ``specs`` order; returns the bytes sent."""
        import torch

        from learner.policy import exported_parameters

        wanted = {name for name, _, _ in specs}
        params = {ck: p for _, ck, p in exported_parameters(module) if ck in wanted}
        sent = 0
        for name, _, _ in specs:
            t = params[name].detach().contiguous()
            self.comm.broadcast(t, src=0, stream=torch.cuda.current_stream())
            sent += t.numel() * t.element_size()
        torch.cuda.current_stream().synchronize()
        return sent
