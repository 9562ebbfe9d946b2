"""Evaluation scoring in milliseconds: the paper's answer parsing, Wilson intervals,
grouping of accuracies. No Ray, no model."""
from __future__ import annotations

import math

import pytest

from actors.sharding import contiguous_shards
from pipelines.evaluation.accuracy import accuracy_table, score_completion, summarize, wilson_interval, worst_examples
from rewards.parse import extract_eval_answer, is_correct_eval


@pytest.mark.parametrize("text, expected", [
    ("<think>x</think> <answer>B</answer>", "B"),
    ("<answer> C </answer>", "C"),
    ("<answer>\nD\n</answer>", "D"),  # \s matches newlines in the eval regex
    ("<answer>A</answer><answer>B</answer>", "A"),  # first match wins
    ("<answer>A) CT</answer> then <answer>B</answer>", "B"),  # first *match*: 'A) CT' is not \w+
    ("<answer>AB</answer>", "AB"),  # \w+ takes the whole word; it is then simply wrong
    ("<answer>option_c</answer>", "option_c"),
    ("<answer></answer>", None),
    ("<answer> </answer>", None),
    ("<answer>B", None),
    ("B", None),  # a bare letter is not an answer at eval time
    ("", None),
    ("<ANSWER>B</ANSWER>", None),  # case-sensitive tags
    ("<answer>B.</answer>", None),
    ("<answer><answer>C</answer>", "C"),
    ("<think><answer>A</answer></think><answer>B</answer>", "A"),  # inside think still counts: first match
])
def test_extract_eval_answer_paper_semantics(text, expected):
    assert extract_eval_answer(text) == expected


@pytest.mark.parametrize("text, letter, ok", [
    ("<answer>B</answer>", "B", True),
    ("<answer>b</answer>", "B", False),  # exact comparison, no case folding
    ("<answer>AB</answer>", "A", False),
    ("<answer>A</answer><answer>B</answer>", "B", False),
    ("no tags at all, the answer is B", "B", False),  # no match is wrong
    ("<answer> B </answer>", "<answer> B </answer>", True),  # Med-R1 solution form as ground truth
    (None, "B", False),
])
def test_is_correct_eval(text, letter, ok):
    assert is_correct_eval(text, letter) is ok


def test_score_completion_matches_parser_and_format():
    good = score_completion("<think>looks like CT</think> <answer>A</answer>", "A")
    assert good == {"predicted": "A", "correct": True, "format_ok": True}
    # right letter, broken format (text outside tags): correct but not format_ok
    s = score_completion("I think <answer>A</answer>", "A")
    assert s["correct"] and not s["format_ok"]
    s = score_completion("<think>x</think> A", "A")
    assert s == {"predicted": "", "correct": False, "format_ok": False}
    # no-think style uses the no-think format reward
    assert score_completion("<answer>C</answer>", "C", "nothink")["format_ok"]
    assert not score_completion("<answer>C</answer>", "C", "think")["format_ok"]
    # adversarial: a very long, tag-laden completion is parsed quickly and correctly
    evil = "<answer>" * 5000 + " " * 5000 + "x"
    assert score_completion(evil, "A")["predicted"] == ""


def test_wilson_interval_hand_computed():
    # 8/10: p=0.8, z=1.96 -> centre 0.71674, half-width 0.22658
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-4)
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def _row(mod, qt, src, correct, predicted="A", fmt=True, tokens=5):
    return {"modality": mod, "question_type": qt, "source": src, "correct": correct, "predicted": predicted,
            "format_ok": fmt, "completion_tokens": tokens}


def test_accuracy_table_grouping():
    rows = [
        _row("CT", "disease diagnosis", "s1", True),
        _row("CT", "modality recognition", "s1", False),
        _row("MRI", "disease diagnosis", "s2", True),
        _row("MRI", "disease diagnosis", "s2", True),
        _row("OCT", "lesion grading", "s1", False, predicted=""),
    ]
    t = accuracy_table(rows)
    assert t["overall"]["n"] == 5 and t["overall"]["correct"] == 3 and t["overall"]["accuracy"] == pytest.approx(0.6)
    assert list(t["by_modality"]) == ["CT", "MRI", "OCT"]
    assert t["by_modality"]["CT"] == {"accuracy": 0.5, "n": 2, "correct": 1, "ci95": list(wilson_interval(1, 2))}
    assert t["by_modality"]["MRI"]["accuracy"] == 1.0
    assert t["by_question_type"]["disease diagnosis"]["n"] == 3
    assert t["by_question_type"]["disease diagnosis"]["correct"] == 3
    assert t["by_source"]["s1"]["n"] == 3 and t["by_source"]["s2"]["correct"] == 2
    assert sum(c["n"] for c in t["by_modality"].values()) == t["overall"]["n"]
    m = summarize(rows, skipped=[{"prompt_id": "x", "image_path": "", "reason": "image missing"}], seconds=2.0)
    assert m["n"] == 5 and m["unparsable"] == 1 and m["skipped"]["count"] == 1
    assert m["format_rate"] == pytest.approx(1.0)
    assert m["prompts_per_s"] == pytest.approx(2.5) and m["tokens"] == 25
    empty = summarize([])
    assert empty["n"] == 0 and empty["overall"]["accuracy"] == 0.0 and not math.isnan(empty["format_rate"])


def test_worst_examples_wrong_first_then_unparsable():
    rows = [_row("CT", "q", "s", False, predicted=""), _row("CT", "q", "s", True),
            _row("CT", "q", "s", False, predicted="B")]
    worst = worst_examples(rows, 5)
    assert [r["predicted"] for r in worst] == ["B", ""]
    assert worst_examples(rows, 1)[0]["predicted"] == "B"


def test_contiguous_shards():
    assert contiguous_shards(5, 2) == [(0, 3), (3, 5)]
    assert contiguous_shards(1, 3) == [(0, 1)]
    assert contiguous_shards(0, 2) == []
    covered = [i for a, b in contiguous_shards(103, 4) for i in range(a, b)]
    assert covered == list(range(103))
