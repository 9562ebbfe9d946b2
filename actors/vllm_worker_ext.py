"""Methods added to every vLLM worker (``worker_extension_cls``).

Importing this module in the worker registers the project's weight-transfer
engines (``actors/transfer_engines.py``) into vLLM's factory before the worker
builds its engine, and applies the engine's choice of plain or packed CPU linear
weights (``actors/cpu_weights.py``) before the model is built. The pushes themselves go through vLLM's own weight-transfer
calls; what is added here is the check that a push landed. Names start with
``medr1_`` because an extension may not redefine methods the worker already has.
"""
from __future__ import annotations

from actors import cpu_weights, transfer_engines, transfer_shm  # noqa: F401  (register medr1_gloo, medr1_stream, medr1_shm)
from actors.weight_verify import stale_cpu_kernels, tensor_stats

cpu_weights.apply_env()  # a worker process of its own: build the model with the engine's CPU linear choice


class MedR1WorkerExtension:
    def medr1_weight_stats(self) -> dict[str, dict[str, list[float]]]:
        """[sum, sum of squares, numel] of every parameter, and of every tensor the last push delivered
        (``received``: what can be checked where the CPU kernels repacked a weight out of sight)."""
        params = {name: tensor_stats(p) for name, p in self.model_runner.model.named_parameters()}
        engine = getattr(self, "weight_transfer_engine", None)
        return {"params": params, "received": dict(getattr(engine, "received", {}) or {}),
                "stale_kernels": stale_cpu_kernels(self.model_runner.model)}

    def medr1_close_open_update(self) -> bool:
        """Close an update that a failed push left open (a rollout actor died mid-push), so the transfer
        engine can be released and a new group formed. What it loaded is kept; the next push rewrites
        every weight before this engine samples again (it is pushed to before the next rollout)."""
        if not getattr(self, "_weight_update_active", False):
            return False
        try:
            self.finish_weight_update()
        finally:  # even if finishing a partial update failed: the session must not stay open
            if self._weight_update_active:
                self._weight_update_active = False
                self.weight_transfer_engine.reset_weight_update_target()
        return True

    def medr1_shm_skips(self) -> list[str] | None:
        """The tensors this worker's shm engine reads from the segment itself (None: it loads them all)."""
        engine = getattr(self, "weight_transfer_engine", None)
        skips = getattr(engine, "skipped_names", None)
        return skips() if skips is not None else None

    def medr1_param_names(self, names: list[str]) -> dict[str, str | None]:
        """Checkpoint name -> the vLLM parameter it loads into (None: none found), through the
        model's own name mapper and fused (packed) modules, e.g. q_proj -> qkv_proj."""
        model = self.model_runner.model
        params = dict(model.named_parameters())
        mapper = getattr(model, "hf_to_vllm_mapper", None)
        packed: dict[str, list[str]] = {}
        for module in model.modules():  # the language model declares its own fused modules, not the top model
            for fused, parts in (getattr(module, "packed_modules_mapping", None) or {}).items():
                packed.setdefault(fused, list(parts))
        out = {}
        for name in names:
            mapped = mapper.map_name(name) if mapper is not None else name
            mapped = mapped if mapped is not None else name
            hit = mapped if mapped in params else None
            for fused, parts in packed.items():
                for part in parts:
                    cand = mapped.replace(f".{part}.", f".{fused}.")
                    if hit is None and cand != mapped and cand in params:
                        hit = cand
            out[name] = hit
        return out
