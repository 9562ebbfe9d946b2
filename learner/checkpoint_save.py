"""One rank's part of a collective checkpoint save (``GRPOLearner.save_checkpoint``), and the ranks'
agreement on whether it worked.

A save is collective: every rank writes its ZeRO shards and waits for the others. If one rank's
write fails (its disk is full) and it simply raised, the others would wait at the next barrier
until the process group times out, with no word of why. So every rank takes part in every
collective of the save whatever happened to its own writes, and the ranks then exchange their
outcome: a failure anywhere is raised on every rank, naming the rank and its error, and the
staging copy is removed (``learner.checkpoint_atomic``; the previous checkpoints stay as they were).

Waits are bounded: the exchange starts with a monitored barrier that names any rank that has not
arrived after ``wait_s`` (one that died, or hangs), instead of waiting forever.

Limit: a rank whose write fails inside DeepSpeed's ``engine.save_checkpoint`` skips DeepSpeed's
closing barrier, so it enters one barrier in its place to release the others. That matches
DeepSpeed's own save for ZeRO stages 0-2 (a barrier before the writes, one after, no collective
between them); a failure between collectives of another layout ends at the barrier's time limit.
"""
from __future__ import annotations

import errno
import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Optional

import torch.distributed as dist

from learner import checkpoint_atomic, checkpoint_manifest, lora

SAVE_WAIT_S = 600.0  # a rank that has not finished its part of a save this long after the first: named, not awaited
CLIENT_STATE = "medr1_state.json"  # the client state again, as JSON
DS_TAG = "state"
_WRITE_ERRORS = (OSError, RuntimeError)  # torch reports a full disk as a RuntimeError


def save_checkpoint(lrn, directory: str, client_state: Optional[dict], files: Optional[dict[str, str]],
                    export_hf: bool, wait_s: float = SAVE_WAIT_S) -> str:
    """``lrn``: the ``GRPOLearner`` of this rank. See ``GRPOLearner.save_checkpoint``."""
    d = Path(directory)
    stage = _staging(lrn, d)
    err: Optional[BaseException] = None
    try:
        if export_hf:
            sd = {name: t for name, _, t in lrn._gathered_params()}  # in-memory names; collective under ZeRO-3
            if lrn.rank == 0:
                # Writes model.safetensors under the checkpoint names (a tied head left out), config.json and
                # generation_config.json: what vLLM and from_pretrained load. LoRA: the merged base model.
                base = lrn.engine.module.get_base_model() if lrn.lora else lrn.engine.module
                base.save_pretrained(stage / "hf", state_dict=sd)
                lrn.processor.save_pretrained(stage / "hf")
            del sd
        if lrn.lora and lrn.rank == 0:
            lora.save_adapter(lrn.engine.module, stage / lora.ADAPTER_DIR, lrn.model_path)
            lrn.processor.save_pretrained(stage / lora.ADAPTER_DIR)
    except _WRITE_ERRORS as e:
        err = e  # the DeepSpeed save below is collective: this rank still takes part
    try:
        lrn.engine.save_checkpoint(str(stage / "deepspeed"), tag=DS_TAG,
                                   client_state={"medr1_client_state": dict(client_state or {}),
                                                 "medr1_optimizer_steps": lrn.optimizer_steps},
                                   exclude_frozen_parameters=lrn.lora)
    except _WRITE_ERRORS as e:  # this rank's write, or a collective with a rank that is gone
        err = err or e
        if lrn.world_size > 1:  # in place of DeepSpeed's closing barrier, which the other ranks are waiting in
            _collective(d, lambda: dist.barrier())
    if lrn.rank == 0 and err is None:
        try:  # readable (and sealed) without loading the engine: what the driver checks first
            (stage / "deepspeed" / CLIENT_STATE).write_text(json.dumps(client_state or {}, default=str))
            for rel, text in (files or {}).items():
                (stage / rel).parent.mkdir(parents=True, exist_ok=True)
                (stage / rel).write_text(text)
        except _WRITE_ERRORS as e:
            err = e
    failed = agree(lrn, err, d, wait_s)  # every rank's shards are written before rank 0 seals them
    if not failed:
        if lrn.rank == 0:
            try:
                checkpoint_manifest.seal(stage)
                checkpoint_atomic.publish(stage, d)
            except _WRITE_ERRORS as e:
                err = e
        failed = agree(lrn, err, d, wait_s)  # nobody returns before the checkpoint is in place
    if failed:
        raise _failure(lrn, d, stage, err, failed)
    return str(d)


def _staging(lrn, d: Path) -> Path:
    """Rank 0 clears what crashed saves of ``d`` left and makes the staging directory every rank writes to."""
    stamp: list = [None]
    if lrn.rank == 0:
        try:
            d.parent.mkdir(parents=True, exist_ok=True)
            checkpoint_atomic.recover(d.parent, d.name)
            stamp[0] = str(os.getpid())
            # deepspeed/ made here, so DeepSpeed's own makedirs (before its first barrier) cannot fail
            (checkpoint_atomic.staging_dir(d, stamp[0]) / "deepspeed").mkdir(parents=True)
        except OSError as e:
            stamp[0] = f"!{type(e).__name__}: {e}"
    if lrn.world_size > 1:  # also a barrier: no rank writes before the directory exists
        _collective(d, lambda: dist.broadcast_object_list(stamp, src=0, group=lrn._cpu_group))
    if stamp[0].startswith("!"):
        raise checkpoint_atomic.CheckpointWriteError(
            errno.EIO, f"saving checkpoint {d} failed on rank 0 (its staging directory: {stamp[0][1:]}); nothing "
            "was written in its place and the previous checkpoints are untouched")
    return checkpoint_atomic.staging_dir(d, stamp[0])


def agree(lrn, err: Optional[BaseException], d: Path, wait_s: float) -> list[tuple[int, str, int]]:
    """Every rank says how its part went; returns (rank, error, errno) of every rank that failed.
    A rank that does not arrive within ``wait_s`` is named in a CheckpointWriteError on the ranks that did."""
    mine = None if err is None else (lrn.rank, f"{type(err).__name__}: {err}", getattr(err, "errno", None) or 0)
    if lrn.world_size == 1:
        return [mine] if mine else []
    try:
        dist.monitored_barrier(group=lrn._cpu_group, timeout=timedelta(seconds=wait_s), wait_all_ranks=True)
    except RuntimeError as e:  # gloo names the ranks that did not arrive (on rank 0; the others name rank 0)
        raise checkpoint_atomic.CheckpointWriteError(
            errno.ETIMEDOUT, f"saving checkpoint {d}: not every rank finished its part (waited at most "
            f"{wait_s:.0f}s: {_first_line(e)}); the staging copy is left for the next save to remove and the "
            "previous checkpoints are untouched") from e
    outcomes: list = [None] * lrn.world_size
    _collective(d, lambda: dist.all_gather_object(outcomes, mine, group=lrn._cpu_group))
    return [o for o in outcomes if o]


def _failure(lrn, d: Path, stage: Path, err: Optional[BaseException],
             failed: list[tuple[int, str, int]]) -> checkpoint_atomic.CheckpointWriteError:
    """The same error on every rank, naming the rank that failed (and any other); rank 0 removes the staging copy."""
    rank, message, code = failed[0]
    if lrn.world_size == 1:
        return checkpoint_atomic.write_failed(d, stage, err)
    more = "".join(f"; rank {r} too: {m}" for r, m, _ in failed[1:])
    local = err if rank == lrn.rank else None
    return checkpoint_atomic.write_failed(d, stage, local or OSError(code or errno.EIO, message), rank=rank,
                                          remove=lrn.rank == 0, why=None if local else message + more)


def _collective(d: Path, call) -> None:
    """A collective of the save; a rank that is gone (its connection closed) is an error naming the save."""
    try:
        call()
    except RuntimeError as e:  # gloo: "Connection closed by peer", a timeout, ...
        raise checkpoint_atomic.CheckpointWriteError(
            errno.EIO, f"saving checkpoint {d}: another rank stopped answering ({_first_line(e)}); the staging "
            "copy is left for the next save to remove and the previous checkpoints are untouched") from e


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
