"""A training run's trace writers (train and eval chains in ``OUT/traces``) and what they cite
that the loop knows: the SHA-256 of each weight version, the sampling of each step, the heads
recorded in each checkpoint and at the end of the run."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

import ray

from pipelines.traces import TraceWriter
from pipelines.tracing.chain import combined_head
from pipelines.tracing.provenance import config_sha256

log = logging.getLogger(__name__)

HEADS_FILE = "trace/HEADS.json"  # inside a checkpoint, sealed with it by learner/checkpoint_manifest.py


def checkpoint_heads(checkpoint: str | Path) -> dict[str, str]:
    """The chain heads a checkpoint recorded ({} for one saved without traces)."""
    p = Path(checkpoint) / HEADS_FILE
    return json.loads(p.read_text())["heads"] if p.is_file() else {}


class RunTraces:
    def __init__(self, cfg, out: Path, resumed_from: Optional[str] = None):
        lg, data = cfg.logging, cfg.data
        heads = checkpoint_heads(resumed_from) if resumed_from else {}
        common = dict(run=out.name, images_max_mb=lg.trace_images_max_mb,
                      signing_key=lg.trace_signing_key or None)
        cfg_hash = config_sha256(cfg)

        def writer(kind: str, split: str) -> TraceWriter:
            # A chain new to this directory continues the checkpoint's (a resume into another output_dir).
            cont = {"head": heads[kind], "checkpoint": str(resumed_from)} if kind in heads else None
            prov = {"config_sha256": cfg_hash, "dataset": f"{data.prepared_dir}:{split}"}
            return TraceWriter(out / "traces", kind=kind, provenance=prov, continue_from=cont, **common)

        self.train = writer("train", data.train_split)
        self.eval = writer("eval", data.test_split)
        self._heads: Optional[dict[str, str]] = None  # the final heads, once closed
        self._weights: dict[int, Any] = {}  # version -> hex, or the learner's pending ObjectRef

    def note_weights(self, version: int, ref) -> None:
        """The SHA-256 of ``version`` (an ObjectRef: resolved when a row first needs it, after the rollout)."""
        self._weights[version] = ref

    def note_start(self, checkpoint: str | None, step: int) -> None:
        """A resumed run, or a rerun over rows an earlier attempt left (no checkpoint: it starts over), records
        in the train chain where its rows start and which checkpoint head it continues: rows between that head
        and here were sampled by a run that stopped before its next checkpoint (``pipelines/audit/ledger.py``)."""
        if checkpoint or self.train.rows_written():
            self.train.note_resume({"checkpoint": str(checkpoint or ""), "step": int(step),
                                    "checkpoint_head": checkpoint_heads(checkpoint).get("train", "") if checkpoint
                                    else ""})

    def weights_sha256(self, version: int) -> str:
        v = self._weights.get(version, "")
        if isinstance(v, ray.ObjectRef):
            try:
                v = ray.get(v) or ""
            except ray.exceptions.RayError as e:  # the learner died: the step's learner call stops the run, naming it
                log.warning("weights SHA-256 of version %d unavailable (%s); rows cite none", version, type(e).__name__)
                v = ""
            self._weights[version] = v
        return v

    def heads(self) -> dict[str, str]:
        self.train.flush()
        self.eval.flush()
        return self.train.heads()

    def checkpoint_files(self) -> tuple[dict[str, str], dict[str, str]]:
        """Flush; the heads, and the file recording them that the learner writes into the checkpoint's
        staging copy before sealing it (so they are sealed with the weights they go with)."""
        heads = self.heads()
        text = json.dumps({"heads": heads, "head": combined_head(heads), "run_id": self.train.run_id}, indent=1)
        return heads, {HEADS_FILE: text + "\n"}

    def close(self, quiet: bool = False) -> dict[str, Any]:
        """Close both writers (once: a stopped run's shutdown closes them too); the summary's trace fields.
        ``quiet``: a failure is logged, not raised (at shutdown it would hide why the run stopped)."""
        if self._heads is None:
            self._heads = {}  # never twice, even after a failure: a closed writer's flush would wait forever
            try:
                heads = self.heads()
                self.train.close()
                self.eval.close()
                self._heads = heads
            except Exception as e:
                if not quiet:
                    raise
                log.warning("closing the trace store failed: %s: %s", type(e).__name__, e)
                return {}
        heads = self._heads
        return {"trace_heads": heads, "trace_head": combined_head(heads), "trace_run_id": self.train.run_id}
