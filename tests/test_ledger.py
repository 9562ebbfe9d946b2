"""The per-prompt ledger (pipelines/audit/ledger.py) on hand-made chains: every expected count
is worked out by hand from the rows written here, and each case is one a broken run would produce."""
from __future__ import annotations

import json

from pipelines.audit.ledger import build_ledger, schedule
from pipelines.traces import TraceWriter, read_traces, trace_row
from pipelines.tracing.chain import read_manifest
from pipelines.tracing.verify import verify_store
from pipelines.training.phase import PhaseMarker, read_phase

G = 2  # completions per prompt


def test_schedule_follows_the_cursor_across_an_epoch_boundary():
    # 5 records, 2 per step, unshuffled: epoch 0 is a b c d e, epoch 1 starts again at a.
    ids = ["a", "b", "c", "d", "e"]
    assert schedule(ids, 2, seed=0, shuffle=False, first_step=0, end_step=4) == [
        (0, "a"), (0, "b"), (1, "c"), (1, "d"), (2, "e"), (2, "a"), (3, "b"), (3, "c")]
    assert schedule(ids, 2, seed=0, shuffle=False, first_step=1, end_step=3) == [
        (1, "c"), (1, "d"), (2, "e"), (2, "a")]
    # Shuffled: each epoch is a permutation of all five, so the first 5 slots hold each id once.
    shuffled = schedule(ids, 2, seed=3, shuffle=True, first_step=0, end_step=3)
    assert sorted(p for _, p in shuffled[:5]) == ids


def _rows(slots, start_seq=0):
    """G rows per (step, prompt) slot, chained by a fake hash that names the seq."""
    rows, seq = [], start_seq
    for step, pid in slots:
        for i in range(G):
            rows.append({"seq": seq, "step": step, "prompt_id": pid, "sample_index": i, "row_sha256": f"h{seq}"})
            seq += 1
    return rows


SCHED = [(0, "a"), (0, "b"), (1, "c"), (1, "d"), (2, "e"), (2, "a")]


def test_an_uninterrupted_run_trains_each_slot_once_in_order():
    rows = _rows(SCHED)
    lg = build_ledger(rows, [], rows[-1]["row_sha256"], SCHED, G, end_step=3)
    assert (lg.scheduled, lg.trained, lg.duplicated, lg.missing, lg.order_ok, lg.ok) == (6, 6, 0, 0, True, True)
    assert lg.prompts["a"] == {"scheduled": [0, 2], "trained": [0, 2]}


def test_steps_redone_after_a_resume_are_not_counted_twice():
    # step_1 sealed the head after step 0 (seq 3); the stopped run then wrote step 1 (seq 4..7);
    # the resumed run starts at seq 8 and writes steps 1 and 2 again.
    rows = _rows(SCHED[:4]) + _rows(SCHED[2:], start_seq=8)
    resume = {"checkpoint": "ckpt/step_1", "checkpoint_head": "h3", "step": 1, "at_seq": 8}
    lg = build_ledger(rows, [resume], rows[-1]["row_sha256"], SCHED, G, end_step=3)
    assert lg.ok and lg.abandoned == 2 and lg.trained == 6, lg
    # The same rows without the resume record: steps 1 is there twice and the order breaks.
    lg = build_ledger(rows, [], rows[-1]["row_sha256"], SCHED, G, end_step=3)
    assert (lg.trained, lg.duplicated, lg.missing, lg.order_ok, lg.ok) == (6, 2, 0, False, False)


def test_a_rerun_without_a_checkpoint_abandons_everything_before_it():
    rows = _rows(SCHED[:2]) + _rows(SCHED, start_seq=4)
    lg = build_ledger(rows, [{"checkpoint": "", "checkpoint_head": "", "step": 0, "at_seq": 4}],
                      rows[-1]["row_sha256"], SCHED, G, end_step=3)
    assert lg.ok and lg.abandoned == 2


def test_lost_reordered_and_uncommitted_groups_are_found():
    rows = _rows(SCHED[:3] + SCHED[4:])  # (1, "d") never trained
    lg = build_ledger(rows, [], rows[-1]["row_sha256"], SCHED, G, end_step=3)
    assert (lg.trained, lg.missing, lg.duplicated, lg.order_ok) == (5, 1, 0, False)
    assert lg.prompts["d"] == {"scheduled": [1], "trained": []}

    stray = SCHED[:3] + [(1, "z")] + SCHED[4:]  # a prompt the schedule never gave step 1
    rows = _rows(stray)
    lg = build_ledger(rows, [], rows[-1]["row_sha256"], SCHED, G, end_step=3)
    assert (lg.trained, lg.missing, lg.duplicated, lg.ok) == (5, 1, 1, False)

    swapped = SCHED[:2] + [SCHED[3], SCHED[2]] + SCHED[4:]
    rows = _rows(swapped)
    lg = build_ledger(rows, [], rows[-1]["row_sha256"], SCHED, G, end_step=3)
    assert (lg.trained, lg.missing, lg.duplicated, lg.order_ok, lg.ok) == (6, 0, 0, False, False)

    # A stopped run not resumed yet: its history ends at step_2's head (seq 7); the step-2 rows are uncommitted.
    rows = _rows(SCHED)
    lg = build_ledger(rows, [], "h7", SCHED[:4], G, end_step=2)
    assert lg.ok and lg.uncommitted == 2


def test_heads_that_name_no_row_and_broken_groups_are_problems():
    rows = _rows(SCHED)
    lg = build_ledger(rows, [{"checkpoint": "x", "checkpoint_head": "nope", "step": 1, "at_seq": 4}],
                      rows[-1]["row_sha256"], SCHED, G, end_step=3)
    assert not lg.ok and any("x names no row" in p for p in lg.problems)
    short = [r for r in rows if not (r["prompt_id"] == "c" and r["sample_index"] == 1)]  # one completion lost
    lg = build_ledger(short, [], short[-1]["row_sha256"], SCHED, G, end_step=3)
    assert not lg.ok and lg.missing == 1 and any("not one group" in p for p in lg.problems)


def _train_rows(step, ids):
    from pipelines.data.schema import VQARecord

    out = []
    for pid in ids:
        rec = VQARecord(pid, b"png", "Q?", ["x", "y"], "A", "CT", "organ", "src")
        out += [trace_row(rec, {"text": "<answer>A</answer>"}, kind="train", run="r", model="m", step=step,
                          weight_version=0, worker=0, image_sha256="", correct=True, format_ok=True,
                          sample_index=i, reward=1.0, advantage=0.0) for i in range(G)]
    return out


def test_the_writer_records_where_a_resumed_run_starts(tmp_path):
    d = tmp_path / "traces"
    w = TraceWriter(d, "train", background=False)
    w.add(_train_rows(0, ["a", "b"]))
    w.flush()
    sealed = w.heads()["train"]  # what a step_1 checkpoint would seal
    w.add(_train_rows(1, ["c", "d"]))  # then the run stops before step_2
    w.close()
    w = TraceWriter(d, "train", background=False)  # the resumed run
    assert w.rows_written() == 8
    w.note_resume({"checkpoint": "ckpt/step_1", "checkpoint_head": sealed, "step": 1})
    w.add(_train_rows(1, ["c", "d"]) + _train_rows(2, ["e", "a"]))
    w.close()
    chain = read_manifest(d)["chains"]["train"]
    assert chain["resumes"] == [{"checkpoint": "ckpt/step_1", "checkpoint_head": sealed, "step": 1, "at_seq": 8}]
    assert verify_store(d).ok  # the record is part of the self-hashed manifest
    rows = read_traces(d, "train").to_pylist()
    lg = build_ledger(rows, chain["resumes"], chain["head"], SCHED, G, start_head=chain["genesis"], end_step=3)
    assert lg.ok and lg.abandoned == 2, lg


def test_phase_marker_says_where_the_driver_is(tmp_path):
    m = PhaseMarker(tmp_path)
    assert read_phase(tmp_path) is None
    timings: dict = {}
    with m.timed(timings, "time_learner", 3):
        assert read_phase(tmp_path)["phase"] == "learning" and read_phase(tmp_path)["step"] == 3
    assert timings["time_learner"] >= 0
    m.enter(4, "saving")
    assert json.loads((tmp_path / "phase.json").read_text())["phase"] == "saving"
    try:
        m.enter(4, "napping")
    except ValueError as e:
        assert "napping" in str(e)
    else:
        raise AssertionError("an unknown phase must be refused")


def test_a_rerun_records_its_start_only_over_earlier_rows(tmp_path):
    """RunTraces.note_start: a first run records nothing; a rerun of the same directory without a checkpoint
    (it starts over) records where its rows start, with no head, so every earlier row is abandoned."""
    from pipelines.config import load_config
    from pipelines.training.run_traces import RunTraces

    out = tmp_path / "run"
    cfg = load_config("smoke.yaml", [f"trainer.output_dir={out}"])
    tr = RunTraces(cfg, out)
    tr.note_start(None, 0)
    tr.train.add(_train_rows(0, ["a", "b"]))
    tr.close()
    assert "resumes" not in read_manifest(out / "traces")["chains"]["train"]
    tr = RunTraces(cfg, out)
    tr.note_start(None, 0)
    assert tr.close() == tr.close()  # closed once: a stopped run's shutdown closes it again, and must not hang
    assert read_manifest(out / "traces")["chains"]["train"]["resumes"] == [
        {"checkpoint": "", "step": 0, "checkpoint_head": "", "at_seq": 4}]
