"""Unit tests for rewards/: named rewards on typical and edge inputs, registry, combination."""

import dataclasses

import pytest

from rewards import (
    RewardScore,
    UnknownRewardError,
    available_rewards,
    combined_scores,
    extract_eval_answer,
    get_reward,
    is_correct_eval,
    normalize_ground_truth,
    parse_choice_letter,
    register_reward,
)
from rewards import registry as registry_mod


def score(name, completion, answer="B"):
    out = get_reward(name)([completion], [answer])
    assert len(out) == 1
    return out[0]


# -----------------------------------------------------------------------------
# format rewards


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<think>abc</think> <answer>B</answer>", 1.0),  # the paper's example
        ("<think>abc</think><answer>B</answer>", 1.0),  # no whitespace between blocks
        ("<think>line1\nline2</think>\n\n<answer>\nB\n</answer>", 1.0),  # DOTALL
        ("<think></think><answer></answer>", 1.0),  # empty blocks are allowed by .*?
        ("<think>a</think>\t\u00a0<answer>B</answer>", 1.0),  # \s includes unicode spaces
        ("<think>a <answer>x</answer></think> <answer>B</answer>", 1.0),  # nested tags inside think
        (" <think>abc</think> <answer>B</answer>", 0.0),  # leading space: fullmatch fails
        ("<think>abc</think> <answer>B</answer> ", 0.0),  # trailing space
        ("<think>abc</think> <answer>B</answer>\n", 0.0),  # trailing newline
        ("<think>abc</think> x <answer>B</answer>", 0.0),  # text between blocks
        ("<answer>B</answer>", 0.0),  # no think
        ("<think>abc</think>", 0.0),  # no answer
        ("<think>abc <answer>B</answer>", 0.0),  # unclosed think
        ("<think>abc</think> <answer>B", 0.0),  # unclosed answer
        ("<answer>B</answer> <think>abc</think>", 0.0),  # wrong order
        ("", 0.0),
        ("abc B", 0.0),  # what skip_special_tokens=True leaves of a good completion
    ],
)
def test_format_think(completion, expected):
    assert score("format", completion) == expected


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<answer>B</answer>", 1.0),
        ("  \n<answer>B</answer>", 1.0),  # leading whitespace allowed
        ("<answer>\nB\n</answer>", 1.0),
        ("<answer></answer>", 1.0),
        ("<answer>B</answer> ", 0.0),  # trailing whitespace is not
        ("<think>abc</think> <answer>B</answer>", 0.0),
        ("B <answer>B</answer>", 0.0),
        ("<answer>B", 0.0),
        ("<answer></answer", 0.0),
        ("<answer>", 0.0),
        ("</answer>", 0.0),
        ("<answer</answer>", 0.0),  # tags must not overlap
    ],
)
def test_format_nothink(completion, expected):
    assert score("format_nothink", completion) == expected


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<answer>B</answer> <think>because</think>", 1.0),
        ("<answer>B</answer><think>because\nmore</think>", 1.0),
        ("<think>abc</think> <answer>B</answer>", 0.0),
        ("<answer>B</answer> <think>because</think> ", 0.0),
        ("<answer>B</answer> so <think>because</think>", 0.0),
        ("<answer>B</answer>", 0.0),
    ],
)
def test_format_think_after(completion, expected):
    assert score("format_think_after", completion) == expected


@pytest.mark.parametrize("name", ["format", "format_nothink", "format_think_after"])
def test_format_non_str_is_zero(name):
    assert get_reward(name)([None, 3, b"<answer>B</answer>"], ["B", "B", "B"]) == [0.0, 0.0, 0.0]


# -----------------------------------------------------------------------------
# strict (paper-exact) accuracy


@pytest.mark.parametrize(
    "completion, answer, expected",
    [
        ("<think>abc</think> <answer>B</answer>", "B", 1.0),
        ("<think>abc</think> <answer> B </answer>", "B", 1.0),  # stripped
        ("<think>abc</think> <answer>B</answer>", "C", 0.0),
        ("<think>abc</think> <answer>C</answer>", "<answer> C </answer>", 1.0),  # Med-R1 solution form
        ("<answer>\nB\n</answer>", "B", 0.0),  # no DOTALL: no match, whole text != "B"
        ("<answer>B\n</answer>", "B", 0.0),
        ("B", "B", 1.0),  # no tag: fall back to the whole completion, stripped
        ("  B \n", "B", 1.0),
        ("B)", "B", 0.0),  # exact comparison: no normalization
        ("<answer>b</answer>", "B", 0.0),  # case-sensitive
        ("<answer>B)</answer>", "B", 0.0),
        ("<answer>A</answer> <answer>B</answer>", "B", 0.0),  # first match wins
        ("<answer>A\n<answer>B</answer>", "B", 1.0),  # first *match* (the first tag never closes on its line)
        ("<answer>A <answer>B</answer>", "B", 0.0),  # lazy: content is "A <answer>B"
        ("", "B", 0.0),
    ],
)
def test_accuracy_strict(completion, answer, expected):
    assert score("accuracy_strict", completion, answer) == expected


def test_normalize_ground_truth():
    assert normalize_ground_truth("B") == "B"
    assert normalize_ground_truth(" B\n") == "B"
    assert normalize_ground_truth("<answer> C </answer>") == "C"
    assert normalize_ground_truth("<answer>D</answer>") == "D"


# -----------------------------------------------------------------------------
# tolerant accuracy


@pytest.mark.parametrize(
    "inner",
    ["B", "b", " B ", "B)", "(B)", "B.", "B:", "B. Pneumonia", "B) Pneumonia", "B)Pneumonia",
     "(B) Pneumonia", "(b)", "Option B", "option (b)", "OPTION B.", "\nB\n"],
)
def test_accuracy_tolerant_accepts(inner):
    completion = f"<think>abc</think> <answer>{inner}</answer>"
    assert score("accuracy", completion, "B") == 1.0
    assert score("accuracy", completion, "<answer> B </answer>") == 1.0
    assert score("accuracy", completion, "C") == 0.0


@pytest.mark.parametrize(
    "inner",
    ["B text", "BC", "The answer is B", "", "(B", "((B))", "optionB", "Option: B", "Bee", "I", "Z)"],
)
def test_accuracy_tolerant_rejects(inner):
    assert score("accuracy", f"<answer>{inner}</answer>", "B") == 0.0


def test_accuracy_tolerant_edge_cases():
    # No tag -> 0 (deliberately no whole-text fallback, unlike the strict mode).
    assert score("accuracy", "B", "B") == 0.0
    assert score("accuracy", "<answer>B", "B") == 0.0
    # First <answer> ... first </answer> after it.
    assert score("accuracy", "<answer>A</answer><answer>B</answer>", "B") == 0.0
    # Lowercase ground truth also works.
    assert score("accuracy", "<answer>(B)</answer>", "b") == 1.0
    # Letters beyond D (up to H) are valid choices.
    assert score("accuracy", "<answer>H.</answer>", "H") == 1.0
    # Non-letter ground truth: case-insensitive whole-content comparison.
    assert score("accuracy", "<answer> Yes </answer>", "yes") == 1.0
    assert score("accuracy", "<answer>no</answer>", "yes") == 0.0
    assert score("accuracy", "<answer></answer>", "") == 0.0
    # Non-str inputs score 0 instead of raising.
    assert get_reward("accuracy")([None, "<answer>B</answer>"], ["B", None]) == [0.0, 0.0]
    assert get_reward("accuracy_strict")([None, "B"], ["B", None]) == [0.0, 0.0]


def test_parse_choice_letter():
    assert parse_choice_letter("(c) something") == "C"
    assert parse_choice_letter("A: x") == "A"
    assert parse_choice_letter("A lesion") is None  # the English article is not an answer
    assert parse_choice_letter("I") is None  # beyond H
    assert parse_choice_letter("options B") is None


@pytest.mark.parametrize("name", ["accuracy", "accuracy_strict"])
def test_accuracy_length_mismatch(name):
    with pytest.raises(ValueError):
        get_reward(name)(["<answer>B</answer>"], ["B", "C"])


# -----------------------------------------------------------------------------
# evaluation parser


def test_extract_eval_answer():
    assert extract_eval_answer("<think>x</think><answer> B </answer>") == "B"
    assert extract_eval_answer("<answer>\nB\n</answer>") == "B"  # \s crosses newlines
    assert extract_eval_answer("<answer>B)</answer>") is None  # \w+ only
    assert extract_eval_answer("<answer>B C</answer>") is None
    assert extract_eval_answer("<answer>B) x</answer> then <answer>C</answer>") == "C"  # first *match*
    assert extract_eval_answer("B") is None
    assert extract_eval_answer(None) is None


def test_is_correct_eval():
    assert is_correct_eval("<answer> B </answer>", "B")
    assert is_correct_eval("<answer>B</answer>", "<answer> B </answer>")
    assert not is_correct_eval("<answer>b</answer>", "B")
    assert not is_correct_eval("B", "B")  # no match is wrong
    assert not is_correct_eval(None, "B")


# -----------------------------------------------------------------------------
# registry


def test_builtin_names():
    names = available_rewards()
    for n in ["format", "format_nothink", "format_think_after", "accuracy", "accuracy_strict"]:
        assert n in names


def test_unknown_name_lists_available():
    with pytest.raises(KeyError) as ei:
        get_reward("acuracy")
    msg = str(ei.value)
    assert "acuracy" in msg and "accuracy_strict" in msg and "format_nothink" in msg
    assert isinstance(ei.value, ValueError)
    assert isinstance(ei.value, UnknownRewardError)


@pytest.fixture
def clean_registry():
    saved = dict(registry_mod._REGISTRY)
    yield
    registry_mod._REGISTRY.clear()
    registry_mod._REGISTRY.update(saved)


def test_register_user_reward(clean_registry):
    def length_reward(completions, answers):
        return [float(len(c)) for c in completions]

    register_reward("length", length_reward)
    assert get_reward("length")(["ab", "abc"], ["A", "A"]) == [2.0, 3.0]
    assert "length" in available_rewards()

    with pytest.raises(ValueError):
        register_reward("length", lambda c, a: [0.0] * len(c))
    register_reward("length", lambda c, a: [0.0] * len(c), overwrite=True)
    assert get_reward("length")(["ab"], ["A"]) == [0.0]
    with pytest.raises(ValueError):
        register_reward("format", length_reward)  # built-ins are protected too


def test_register_decorator(clean_registry):
    @register_reward("always_one")
    def always_one(completions, answers):
        return [1.0] * len(completions)

    assert always_one(["x"], ["A"]) == [1.0]  # decorator returns the function itself
    assert get_reward("always_one") is always_one


def test_register_rejects_bad_input(clean_registry):
    with pytest.raises(ValueError):
        register_reward("", lambda c, a: c)
    with pytest.raises(TypeError):
        register_reward("not_callable", 3)


# -----------------------------------------------------------------------------
# combined scores


def test_combined_scores_keep_components():
    completions = [
        "<think>abc</think> <answer>B</answer>",  # format 1, acc 1
        "<think>abc</think> <answer>C</answer>",  # format 1, acc 0
        "B",  # format 0, strict acc 1 (whole-text fallback)
        None,  # everything 0
    ]
    answers = ["B", "<answer> B </answer>", "B", "B"]
    scores = combined_scores(completions, answers, {"format": 1.0, "accuracy_strict": 2.0})
    assert [s.components for s in scores] == [
        {"format": 1.0, "accuracy_strict": 1.0},
        {"format": 1.0, "accuracy_strict": 0.0},
        {"format": 0.0, "accuracy_strict": 1.0},
        {"format": 0.0, "accuracy_strict": 0.0},
    ]
    assert [s.total for s in scores] == [3.0, 1.0, 2.0, 0.0]
    assert all(isinstance(s, RewardScore) for s in scores)
    with pytest.raises(dataclasses.FrozenInstanceError):
        scores[0].total = 5.0


def test_combined_scores_zero_weight_still_recorded():
    (s,) = combined_scores(["<answer>B</answer>"], ["B"], {"format": 0.0, "accuracy": 1.0})
    assert s.components == {"format": 0.0, "accuracy": 1.0}
    assert s.total == 1.0
    (s,) = combined_scores(["<think>x</think><answer>C</answer>"], ["B"], {"format": 0.5, "accuracy": 1.0})
    assert s.components == {"format": 1.0, "accuracy": 0.0}
    assert s.total == 0.5


def test_combined_scores_errors(clean_registry):
    with pytest.raises(ValueError):
        combined_scores(["a", "b"], ["A"], {"format": 1.0})
    with pytest.raises(ValueError):
        combined_scores(["a"], ["A"], {})
    with pytest.raises(KeyError):
        combined_scores(["a"], ["A"], {"nope": 1.0})
    register_reward("broken", lambda c, a: [1.0])
    with pytest.raises(ValueError):
        combined_scores(["a", "b"], ["A", "B"], {"broken": 1.0})
    assert combined_scores([], [], {"format": 1.0}) == []
