"""Exact resume: a run restarted from its step-1 checkpoint trains on the same
batches in the same order and reaches the same weights as the uninterrupted run."""
from __future__ import annotations

import json

import pytest

from tests.conftest import SMOKE_RUN_OVERRIDES

pytestmark = pytest.mark.slow


def _cfg(start, out, extra=()):
    """The session smoke run's config (tests/conftest.py) with another output dir and ``extra``."""
    from pipelines.config import load_config

    return load_config("smoke.yaml", [f"trainer.output_dir={out}", *start, *SMOKE_RUN_OVERRIDES, *extra])


@pytest.fixture(scope="module")
def full_run(smoke_run):
    """The uninterrupted 2-step run (checkpoints step_1 and final) in ``<root>/full``: the session's smoke run."""
    return smoke_run.root


def test_resume_reaches_the_same_weights(full_run, smoke_start):
    from safetensors.torch import load_file

    from pipelines.traces import read_traces
    from pipelines.training.grpo_loop import run_training

    tmp_path = full_run
    full = tmp_path / "full"
    resumed = tmp_path / "resumed"
    # The resumed run may use a different number of rollout actors.
    run_training(_cfg(smoke_start, resumed, [f"trainer.resume_from={full / 'checkpoints' / 'step_1'}",
                                          "rollout.num_workers=1"]))

    def batch_ids(out, step):
        rows = read_traces(out / "traces", "train").to_pylist()
        return [(r["prompt_id"], r["sample_index"]) for r in rows if r["step"] == step]

    assert batch_ids(resumed, 1) == batch_ids(full, 1), "step 2 must see the same prompts in the same order"
    assert batch_ids(resumed, 0) == [], "the resumed run must not train step 1 again"
    steps = [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2]

    # The trace chain carries on across the resume: the resumed store starts at the head the step-1
    # checkpoint sealed, and verifies against the head its run recorded.
    from pipelines.tracing.verify import verify_store
    from pipelines.training.run_traces import checkpoint_heads

    sealed = checkpoint_heads(full / "checkpoints" / "step_1")
    manifest = json.loads((resumed / "traces" / "MANIFEST.json").read_text())
    assert manifest["chains"]["train"]["genesis"] == sealed["train"]
    v = verify_store(resumed / "traces", heads=(json.loads((resumed / "summary.json").read_text())["trace_head"],))
    assert v.ok, v.problems

    a = load_file(str(full / "checkpoints" / "final" / "hf" / "model.safetensors"))
    b = load_file(str(resumed / "checkpoints" / "final" / "hf" / "model.safetensors"))
    assert a.keys() == b.keys()
    start = load_file(str(full / "checkpoints" / "step_1" / "hf" / "model.safetensors"))
    moved = max(float((a[k] - start[k]).abs().max()) for k in a)
    assert moved > 0, "step 2 did not change the weights; the comparison would prove nothing"
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-5 + 1e-3 * moved, f"resumed weights differ by {worst} (step-2 update size {moved})"


def test_rerun_of_the_same_output_dir_continues_it(full_run, smoke_start):
    """trainer.resume_from=auto (the default): a rerun continues from the newest valid checkpoint, skipping
    what a killed save left; a rerun with other settings is refused before anything starts."""
    import shutil

    from pipelines.errors import UserError
    from pipelines.training.grpo_loop import run_training

    tmp_path = full_run
    out = tmp_path / "rerun" / "full"  # a copy of the 2-step run (steps 1-2: step_1 and final), same name
    shutil.copytree(tmp_path / "full", out)
    half = out / "checkpoints" / "step_3.tmp-999" / "hf"  # a save killed part-way
    half.mkdir(parents=True)
    (half / "model.safetensors").write_bytes(b"partial")
    summary = run_training(_cfg(smoke_start, out, ["trainer.total_steps=3"]))
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3], "the rerun must train step 3 only, continuing from final (step 2)"
    assert "before" not in summary  # not a fresh start: no 'before' evaluation
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["final", "step_1"]
    with pytest.raises(UserError, match="saved with other settings: learner.lr"):
        run_training(_cfg(smoke_start, out, ["trainer.total_steps=3", "learner.lr=0.5"]))
