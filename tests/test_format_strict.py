"""The strict format rewards (rewards/format_strict.py): exactly one think and one answer block,
in order, non-empty; the layouts that game the paper's pattern are refused."""

import pytest

from rewards import available_rewards, get_reward, is_think_format

GOOD = [
    "<think>abc</think> <answer>B</answer>",
    "<think>abc</think><answer>B</answer>",
    "<think>line1\nline2</think>\n\n<answer>\nB\n</answer>",
    "<think>a</think>\t\u00a0<answer>B</answer>",
    "<think>compare <b>bold</b> and 2 < 3</think><answer>C</answer>",  # other angle brackets are text
]

# Each of these earns the paper's format reward (checked below) but not the strict one.
GAMED = [
    "<think>a</think><answer>A</answer><think>b</think><answer>B</answer>",  # repeated pairs
    "<think>a</think><think>b</think><answer>B</answer>",  # two think blocks
    "<think>a</think><answer>A</answer> <answer>B</answer>",  # two answer blocks
    "<think>a <answer>x</answer></think> <answer>B</answer>",  # answer nested in think
    "<think>a <think>b</think></think><answer>B</answer>",  # think nested in think
    "<think>a</think><answer><answer>B</answer></answer>",  # answer nested in answer
    "<think></think><answer>B</answer>",  # empty think
    "<think>a</think><answer></answer>",  # empty answer
    "<think> \n </think><answer>B</answer>",  # blank think
    "<think>a</think><answer>\t</answer>",  # blank answer
    "<think>a</think>So: <answer>B</answer> is wrong</think> <answer>B</answer>",  # stray close tag
]

BAD = [
    "<answer>B</answer><think>a</think>",  # answer before think
    " <think>a</think><answer>B</answer>",  # text before the first tag
    "<think>a</think><answer>B</answer> ",  # text after the last tag
    "<think>a</think> x <answer>B</answer>",  # text between the blocks
    "<think>a</think>",
    "<answer>B</answer>",
    "<think>a<answer>B</answer>",  # think never closed
    "",
    None,
    42,
]


@pytest.mark.parametrize("completion", GOOD)
def test_strict_accepts_one_think_then_one_answer(completion):
    assert get_reward("format_strict")([completion]) == [1.0]


@pytest.mark.parametrize("completion", GAMED)
def test_strict_refuses_what_the_paper_pattern_accepts(completion):
    assert is_think_format(completion), "the case must game the paper's reward, or it tests nothing"
    assert get_reward("format_strict")([completion]) == [0.0]


@pytest.mark.parametrize("completion", BAD)
def test_strict_refuses_bad_layouts(completion):
    assert get_reward("format_strict")([completion]) == [0.0]


@pytest.mark.parametrize("completion, expected", [
    ("<answer>B</answer>", 1.0),
    ("\n <answer> B </answer>", 1.0),
    ("<answer>A</answer><answer>B</answer>", 0.0),  # repeated
    ("<answer><answer>B</answer></answer>", 0.0),  # nested
    ("<answer></answer>", 0.0),  # empty
    ("<answer> </answer>", 0.0),  # blank
    ("<think>a</think><answer>B</answer>", 0.0),  # a think block where none is asked for
    ("<answer>B</answer><think>a</think>", 0.0),
    ("<answer>B</answer> ", 0.0),  # trailing text
    ("B", 0.0),
    (None, 0.0),
])
def test_strict_nothink(completion, expected):
    assert get_reward("format_strict_nothink")([completion]) == [expected]


def test_registered_and_length_checked():
    assert {"format_strict", "format_strict_nothink"} <= set(available_rewards())
    assert get_reward("format_strict")(GOOD + GAMED, ["B"] * (len(GOOD) + len(GAMED))) == \
        [1.0] * len(GOOD) + [0.0] * len(GAMED)
    with pytest.raises(ValueError):
        get_reward("format_strict")(["x"], ["A", "B"])


def test_linear_on_many_unclosed_tags():
    # str.count / find only: 100k repeated tags are answered at once (a backtracking regex would not be).
    import time
    text = "<think>" + "</think><answer>" * 100_000
    t = time.perf_counter()
    assert get_reward("format_strict")([text]) == [0.0]
    assert time.perf_counter() - t < 1.0
