"""The per-prompt ledger of a training run: was every prompt the data cursor scheduled trained
exactly once, in the scheduled order, across crashes and resumes? (``medr1 trace ledger``)

It is built from the train chain of the run's trace store (one row per completion, G per
prompt, written in the order the steps ran) and compared with the schedule the data cursor
(``pipelines/data/cursor.py``) gives for the same records, batch size and seed.

**The checkpointed history.** A run that stops (a learner rank died) may have sampled and
even trained steps after its newest checkpoint; the resumed run continues from that
checkpoint and runs those steps again. That repeat is by design: the weights those steps
produced were never saved. So the ledger counts what the *weights* went through:

- the history ends at the head of the train chain sealed in the checkpoint the run would
  continue from (``final`` for a finished run, else the newest valid ``step_N``);
- each resume is recorded in the store's manifest (``chains.train.resumes``: the checkpoint,
  the head sealed in it, and ``at_seq``, the seq of the resumed run's first row); the rows
  after that head and before ``at_seq`` were sampled by the stopped run after its checkpoint:
  they are *abandoned*, not part of the history;
- rows after the end head are *uncommitted* (a stopped run not resumed yet).

Every (step, prompt) slot of the schedule for steps [first, end) must appear once in the
history; extra groups are *duplicated*, absent slots *missing*, and ``order_ok`` says the
history's groups are exactly the schedule, in order."""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from pipelines.data.cursor import DataCursor
from pipelines.errors import UserError
from pipelines.tracing.chain import read_manifest
from pipelines.tracing.rows import read_traces
from pipelines.training.checkpoints import latest_valid, saved_state
from pipelines.training.run_setup import ensure_data
from pipelines.training.run_traces import checkpoint_heads

_COLUMNS = ("seq", "step", "prompt_id", "sample_index", "row_sha256")


@dataclass
class Ledger:
    scheduled: int = 0  # (step, prompt) slots of the schedule for steps [first_step, end_step)
    trained: int = 0  # slots trained once in the history
    duplicated: int = 0  # groups in the history beyond their slot's count (or for no slot at all)
    missing: int = 0  # slots with no group in the history
    order_ok: bool = False  # the history's groups are the schedule, in order
    first_step: int = 0
    end_step: int = 0
    resumes: int = 0
    abandoned: int = 0  # groups sampled after a checkpoint by a run that then stopped (re-done on resume)
    uncommitted: int = 0  # groups after the history's end (a stopped run, not resumed)
    end: str = ""  # the checkpoint the history ends at
    problems: list[str] = field(default_factory=list)
    prompts: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # id -> scheduled / trained steps

    @property
    def ok(self) -> bool:
        return (self.order_ok and not self.problems and self.duplicated == 0 and self.missing == 0
                and self.trained == self.scheduled)

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def schedule(record_ids: list[str], prompts_per_step: int, *, seed: int, shuffle: bool,
             first_step: int, end_step: int) -> list[tuple[int, str]]:
    """(step, prompt id) of every prompt the cursor gives steps [first_step, end_step), in order."""
    cursor = DataCursor(len(record_ids), prompts_per_step, seed=seed, shuffle=shuffle)
    out = []
    for step in range(end_step):
        batch = cursor.next_batch()
        if step >= first_step:
            out.extend((step, record_ids[i]) for i in batch)
    return out


def groups(rows: list[dict], group_size: int, problems: list[str]) -> list[tuple[int, str, int]]:
    """(step, prompt id, seq of its first row) per group: G consecutive rows, sample_index 0..G-1."""
    out, i = [], 0
    while i < len(rows):
        g = rows[i:i + group_size]
        key = (g[0]["step"], g[0]["prompt_id"])
        if [r["sample_index"] for r in g] != list(range(group_size)) or any(
                (r["step"], r["prompt_id"]) != key for r in g):
            problems.append(f"rows from seq {g[0]['seq']}: not one group of {group_size} completions of one prompt")
            i += 1  # resynchronise on the next row
            while i < len(rows) and rows[i]["sample_index"] != 0:
                i += 1
            continue
        out.append((*key, g[0]["seq"]))
        i += group_size
    return out


def build_ledger(rows: Iterable[dict], resumes: list[dict], end_head: Optional[str], sched: list[tuple[int, str]],
                 group_size: int, *, start_head: str = "", first_step: int = 0, end_step: int = 0,
                 end: str = "") -> Ledger:
    """The ledger of train ``rows`` (the columns in ``_COLUMNS``) against the schedule ``sched``.
    ``end_head``: the train head sealed in the checkpoint the history ends at (None: no checkpoint);
    ``start_head``: the chain's genesis (a head equal to it names no row: nothing before it here)."""
    lg = Ledger(first_step=first_step, end_step=end_step, end=end, resumes=len(resumes))
    rows = sorted(rows, key=lambda r: r["seq"])
    seq_of = {r["row_sha256"]: r["seq"] for r in rows}

    def seq_at(head: Optional[str], what: str) -> int:
        """The seq of the row a head names; -1 for none (no checkpoint yet, or the chain's start)."""
        if not head or head == start_head:
            return -1
        if head not in seq_of:
            lg.problems.append(f"the train head sealed in {what} names no row of the store")
            return -1
        return seq_of[head]

    end_seq = seq_at(end_head, end)
    dropped = [(seq_at(r.get("checkpoint_head"), r.get("checkpoint", "?")), int(r["at_seq"])) for r in resumes]

    def abandoned(seq: int) -> bool:
        return any(a < seq < b for a, b in dropped)

    all_groups = groups(rows, group_size, lg.problems)
    history = [(s, p) for s, p, q in all_groups if q <= end_seq and not abandoned(q)]
    lg.abandoned = sum(abandoned(q) for _, _, q in all_groups)
    lg.uncommitted = sum(q > end_seq and not abandoned(q) for _, _, q in all_groups)

    want, got = Counter(sched), Counter(history)
    lg.scheduled = len(sched)
    lg.trained = sum(min(n, got[k]) for k, n in want.items())
    lg.missing = sum(max(n - got[k], 0) for k, n in want.items())
    lg.duplicated = sum(max(n - want[k], 0) for k, n in got.items())
    lg.order_ok = history == sched
    for step, pid in sched:
        lg.prompts.setdefault(pid, {"scheduled": [], "trained": []})["scheduled"].append(step)
    for step, pid in history:
        lg.prompts.setdefault(pid, {"scheduled": [], "trained": []})["trained"].append(step)
    return lg


def run_ledger(cfg) -> Ledger:
    """The ledger of the run ``cfg`` describes (its ``trainer.output_dir``), from its trace store, its
    newest valid checkpoint and the data cursor's schedule for the same records."""
    out = Path(cfg.trainer.output_dir)
    store = out / "traces"
    manifest = read_manifest(store)
    if manifest is None:
        raise UserError(f"{store}: no trace store (was the run started with logging.traces=false?)")
    if cfg.grpo.dynamic_sampling:
        raise UserError("grpo.dynamic_sampling draws extra prompts depending on the rewards: its schedule is not "
                        "fixed in advance, so there is no per-prompt ledger for it")
    chain = manifest["chains"].get("train", {})
    resumes = list(chain.get("resumes", []))
    checkpoint = latest_valid(out)
    end_head = checkpoint_heads(checkpoint).get("train") if checkpoint else None
    end_step = int(saved_state(checkpoint).get("step", 0)) if checkpoint else 0
    # A chain that starts from another run's checkpoint: its first resume (at seq 0) says at which step.
    first_step = next((int(r["step"]) for r in resumes if int(r["at_seq"]) == 0 and chain.get("continues_from")), 0)
    train, _ = ensure_data(cfg)  # the records the run drew from, in the order the cursor indexes them
    sched = schedule([r.id for r in train], cfg.trainer.prompts_per_step, seed=cfg.data.seed,
                     shuffle=cfg.data.shuffle, first_step=first_step, end_step=end_step)
    rows = read_traces(store, "train").select(list(_COLUMNS)).to_pylist()
    return build_ledger(rows, resumes, end_head, sched, cfg.rollout.group_size, start_head=chain.get("genesis", ""),
                        first_step=first_step, end_step=end_step, end=str(checkpoint or ""))
