"""The one trace-row builder shared by training rollouts and evaluation."""
from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.data.schema import VQARecord
from pipelines.traces import TRACE_COLUMNS, TraceWriter, parse_reasoning, read_traces, trace_row
from pipelines.tracing.chain import read_manifest, write_manifest
from pipelines.tracing.verify import verify_store

REC = VQARecord("r1", b"png", "Which organ?", ["Brain", "Lung"], "B", "CT", "organ", "src", "imgs/r1.png")
COMP = {"text": "<think>lungs</think><answer>B</answer>", "token_ids": [5, 6, 7], "finish_reason": "stop"}


def test_train_and_eval_rows_fill_every_column(tmp_path):
    train = trace_row(REC, COMP, kind="train", run="run", model="m", step=3, weight_version=2, worker=1,
                      image_sha256="ab" * 32, correct=True, format_ok=True, sample_index=4, reward=2.0,
                      reward_components={"accuracy": 1.0, "format": 1.0}, advantage=0.5)
    ev = trace_row(REC, COMP, kind="eval", run="run", model="m", step=-1, weight_version=2, worker=0,
                   image_sha256="ab" * 32, correct=False, format_ok=False)
    assert list(train) == list(TRACE_COLUMNS) and list(ev) == list(TRACE_COLUMNS)
    assert train["predicted"] == ev["predicted"] == "B"
    assert train["prompt"].startswith("Which organ?") and train["completion_tokens"] == 3
    assert ev["reward"] is None and ev["advantage"] is None and ev["sample_index"] == 0

    tw = TraceWriter(tmp_path, kind="train")
    tw.add([train])
    tw.close()
    back = read_traces(tmp_path, "train").to_pylist()[0]
    assert back["reward_components"] == '{"accuracy": 1.0, "format": 1.0}' and back["kind"] == "train"
    tw = TraceWriter(tmp_path, kind="eval")
    tw.add([ev])
    tw.close()
    back = read_traces(tmp_path, "eval").to_pylist()[0]
    assert math.isnan(back["reward"]) and math.isnan(back["advantage"]) and back["reward_components"] == ""


def test_image_path_falls_back_to_a_path_image():
    rec = VQARecord("r2", "/data/r2.png", "Q?", ["a", "b"], "A", "CT", "organ", "src")
    row = trace_row(rec, {"text": "no tags"}, kind="eval", run="", model="", step=0, weight_version=0, worker=-1,
                    image_sha256="", correct=False, format_ok=False)
    assert row["image_path"] == "/data/r2.png" and row["predicted"] == "" and row["finish_reason"] == ""
    assert row["completion_tokens"] == 0


def _rows(n, start=0):
    return [trace_row(REC, {"text": f"<think>r{start + i}</think><answer>B</answer>"}, kind="train", run="run",
                      model="m", step=start + i, weight_version=0, worker=0, image_sha256="", correct=True,
                      format_ok=True, reward=1.0, advantage=0.0) for i in range(n)]


def test_reasoning_is_parsed():
    assert parse_reasoning("<think> a\nb </think><answer>B</answer>") == "a\nb"
    assert parse_reasoning("<think>never closed") == "never closed"
    assert parse_reasoning("<answer>B</answer>") == ""


def test_reopened_store_continues_the_chain(tmp_path):
    """A run resumed into its own output_dir appends to the same chains; verify holds across."""
    d = tmp_path / "traces"
    w = TraceWriter(d, "train", flush_every=3)
    w.add(_rows(7))
    w.close()
    head_before, run_id = w.heads()["train"], w.run_id
    w = TraceWriter(d, "train", flush_every=3)
    assert w.run_id == run_id and w.head == head_before
    w.add(_rows(4, start=7))
    w.close()
    back = read_traces(d, "train").to_pylist()
    assert [r["seq"] for r in back] == list(range(11)) and [r["step"] for r in back] == list(range(11))
    v = verify_store(d, heads=(f"train:{w.heads()['train']}",))
    assert v.ok, v.problems
    assert v.chains["train"]["parts"] == 5  # 3 + 3 + 1, then 3 + 1


def test_chain_continues_from_a_checkpoint_head_in_a_new_directory(tmp_path):
    a, b = tmp_path / "a" / "traces", tmp_path / "b" / "traces"
    w = TraceWriter(a, "train")
    w.add(_rows(3))
    w.close()
    head = w.heads()["train"]
    w2 = TraceWriter(b, "train", continue_from={"head": head, "checkpoint": "a/checkpoints/step_1"})
    w2.add(_rows(2, start=3))
    w2.close()
    assert read_manifest(b)["chains"]["train"]["genesis"] == head
    assert verify_store(b).ok and verify_store(a).ok
    m = read_manifest(b)
    m["chains"]["train"]["continues_from"]["head"] = "0" * 64  # claims another origin
    write_manifest(b, m)
    assert any("genesis" in p.what for p in verify_store(b).problems)


def test_part_left_unlisted_by_a_crash_is_adopted_or_set_aside(tmp_path):
    d = tmp_path / "traces"
    w = TraceWriter(d, "train", flush_every=2)
    w.add(_rows(2))
    w.flush()
    saved = (d / "MANIFEST.json").read_bytes()
    w.add(_rows(2, start=2))
    w.close()
    (d / "MANIFEST.json").write_bytes(saved)  # as if the crash came between the part and the manifest
    assert not verify_store(d).ok
    w = TraceWriter(d, "train")
    w.close()
    assert verify_store(d).ok and read_manifest(d)["chains"]["train"]["rows"] == 4
    pq.write_table(pa.Table.from_pylist(read_traces(d).to_pylist()[:1]), d / "train-00002.parquet")  # a stray
    w = TraceWriter(d, "train")
    w.close()
    assert (d / "train-00002.parquet.orphan").is_file() and verify_store(d).ok


def test_background_and_inline_writers_store_the_same_rows(tmp_path):
    rows = _rows(9)
    for name, bg in (("bg", True), ("inline", False)):
        w = TraceWriter(tmp_path / name, "train", flush_every=4, background=bg)
        w.add([dict(r) for r in rows])
        w.close()
    a, b = (read_traces(tmp_path / n).to_pylist() for n in ("bg", "inline"))
    strip = ("run_id", "row_sha256")
    assert [{k: v for k, v in r.items() if k not in strip} for r in a] == \
        [{k: v for k, v in r.items() if k not in strip} for r in b]
