"""Reasoning faithfulness (rewards/faithfulness.py): hand-worked cases."""
from __future__ import annotations

import pytest

from rewards.faithfulness import faithfulness, judge, names_option, reasoning_text

OPTS = ["CT", "MRI", "OCT", "Upper left"]


@pytest.mark.parametrize("text,option,named", [
    ("A CT scan of the head.", "CT", True),
    ("An OCT scan of the macula.", "CT", False),  # whole phrase only
    ("the lesion is in the upper  left part", "Upper left", True),  # case and spacing ignored
    ("Grade 10", "Grade 1", False),
    ("It shows Grade 1.", "Grade 1", True),
    ("anything", "", False),
])
def test_names_option(text, option, named):
    assert names_option(text, option) is named


def test_reasoning_text():
    assert reasoning_text("<think>a b</think> <answer>A</answer>") == "a b"
    assert reasoning_text("<think>never closed") == "never closed"
    assert reasoning_text("<answer>A</answer>") == ""


def test_judge_reads_the_chosen_letter_against_the_options():
    j = judge("<think>MRI of the brain</think> <answer>B</answer>", OPTS, "B")
    assert j == {"chosen": "B", "correct": True, "names_chosen": True, "names_other": False}
    j = judge("<think>CT of the head</think> <answer>E</answer>", OPTS, "A")  # no option E: chose nothing
    assert j["chosen"] is None and not j["correct"]


def test_faithfulness_shares_by_hand():
    completions = [
        "<think>CT of the head</think> <answer>A</answer>",   # right, names A            -> faithful
        "<think>something</think> <answer>B</answer>",        # right, names nothing      -> not faithful
        "<think>MRI, upper left</think> <answer>B</answer>",  # right, names B (and D)    -> faithful
        "<think>CT image</think> <answer>C</answer>",         # wrong, names A (another)  -> other named
        "<think>OCT image</think> <answer>C</answer>",        # wrong, names only C       -> not other
        "<think>CT</think> no answer",                        # chose nothing: in neither share
    ]
    answers = ["A", "B", "B", "A", "B", "A"]
    out = faithfulness(completions, [OPTS] * 6, answers)
    assert out == {"faithful_correct": 2 / 3, "n_correct": 3, "other_named_wrong": 1 / 2, "n_wrong": 2}


def test_faithfulness_empty_and_mismatched():
    assert faithfulness([], [], []) == {"faithful_correct": 0.0, "n_correct": 0, "other_named_wrong": 0.0,
                                        "n_wrong": 0}
    with pytest.raises(ValueError, match="same length"):
        faithfulness(["x"], [], ["A"])


def test_rows_faithfulness_reads_options_as_json_or_list_and_examples_spread():
    from pipelines.evaluation.examples import format_examples, pick_examples, rows_faithfulness

    rows = [{"completion": "<think>CT</think> <answer>A</answer>", "options": '["CT", "MRI"]', "answer": "A"},
            {"completion": "<think>CT</think> <answer>B</answer>", "options": ["CT", "MRI"], "answer": "A"}]
    assert rows_faithfulness(rows) == {"faithful_correct": 1.0, "n_correct": 1, "other_named_wrong": 1.0,
                                       "n_wrong": 1}
    many = [dict(rows[0], prompt_id=f"p{i}", question="Q?", reasoning="CT", predicted="A", correct=True)
            for i in range(25)]
    ex = pick_examples(many, 10)
    assert [e["prompt_id"] for e in ex] == [f"p{i}" for i in range(0, 20, 2)]
    assert "A)CT, B)MRI" in format_examples(ex[:1]) and "correct" in format_examples(ex[:1])
