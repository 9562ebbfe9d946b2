"""The one trace-row builder shared by training rollouts and evaluation."""
from __future__ import annotations

import math

from pipelines.data.schema import VQARecord
from pipelines.traces import TRACE_COLUMNS, TraceWriter, read_traces, trace_row

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
