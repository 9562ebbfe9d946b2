"""Property tests for rewards/: agreement with the paper's regexes, totality, linear time."""

import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rewards import available_rewards, extract_eval_answer, get_reward
from rewards.accuracy import extract_answer_dotall, extract_answer_strict
from rewards.format import is_nothink_format, is_think_after_format, is_think_format

# The paper's patterns, written out here independently of rewards/format.py.
REF_THINK = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
REF_NOTHINK = re.compile(r"\s*<answer>.*?</answer>", re.DOTALL)
REF_THINK_AFTER = re.compile(r"<answer>.*?</answer>\s*<think>.*?</think>", re.DOTALL)
REF_ANSWER = re.compile(r"<answer>(.*?)</answer>")
REF_ANSWER_DOTALL = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def paper_accuracy(content: str, sol: str) -> float:
    """The paper's accuracy reward, re-implemented from its description with re."""
    m = REF_ANSWER.search(sol)
    gt = m.group(1).strip() if m else sol.strip()
    m = REF_ANSWER.search(content)
    pred = m.group(1).strip() if m else content.strip()
    return 1.0 if pred == gt else 0.0


FRAGMENTS = [
    "<think>", "</think>", "<answer>", "</answer>", "<", ">", "/", "think", "answer",
    " ", "\n", "\t", "\r", "\u00a0", "\u2003", "\x1c", "\x00", "a", "B", "C", "(", ")", ".", "é", "思",
]
tagged_text = st.lists(st.sampled_from(FRAGMENTS), max_size=14).map("".join)
any_text = st.one_of(tagged_text, st.text(max_size=60))
letters = st.sampled_from(["A", "B", "C", "D", "<answer> B </answer>", "<answer>C</answer>", "b", ""])
maybe_text = st.one_of(any_text, st.none(), st.integers(), st.binary(max_size=8))

# Example counts keep the whole file at a few seconds; the regex-agreement tests get more.
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
THOROUGH = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@THOROUGH
@given(tagged_text)
def test_format_matches_reference_regex(s):
    assert is_think_format(s) == bool(REF_THINK.fullmatch(s))
    assert is_nothink_format(s) == bool(REF_NOTHINK.fullmatch(s))
    assert is_think_after_format(s) == bool(REF_THINK_AFTER.fullmatch(s))


@THOROUGH
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=6).map("".join),
       st.lists(st.sampled_from(FRAGMENTS), max_size=6).map("".join),
       st.lists(st.sampled_from([" ", "\n", "\t", "\u3000", "x"]), max_size=3).map("".join))
def test_format_reference_on_near_valid(a, b, ws):
    # Mostly well-formed skeletons with random filler: exercises the accepting side too.
    for s in (f"<think>{a}</think>{ws}<answer>{b}</answer>",
              f"{ws}<answer>{a}</answer>",
              f"<answer>{a}</answer>{ws}<think>{b}</think>"):
        assert is_think_format(s) == bool(REF_THINK.fullmatch(s))
        assert is_nothink_format(s) == bool(REF_NOTHINK.fullmatch(s))
        assert is_think_after_format(s) == bool(REF_THINK_AFTER.fullmatch(s))


@FAST
@given(any_text)
def test_extraction_matches_reference_regex(s):
    m = REF_ANSWER.search(s)
    assert extract_answer_strict(s) == (m.group(1) if m else None)
    m = REF_ANSWER_DOTALL.search(s)
    assert extract_answer_dotall(s) == (m.group(1) if m else None)


@FAST
@given(any_text, letters)
def test_strict_accuracy_is_paper_accuracy(s, answer):
    assert get_reward("accuracy_strict")([s], [answer]) == [paper_accuracy(s, answer)]


@FAST
@given(st.lists(st.tuples(maybe_text, st.one_of(letters, st.none())), max_size=5))
def test_all_rewards_total_binary_deterministic(pairs):
    completions = [c for c, _ in pairs]
    answers = [a for _, a in pairs]
    for name in available_rewards():
        fn = get_reward(name)
        first = fn(completions, answers)
        assert len(first) == len(completions)
        assert all(v in (0.0, 1.0) and isinstance(v, float) for v in first)
        assert fn(list(completions), list(answers)) == first


no_answer_tag = tagged_text.filter(lambda t: "<answer>" not in t)
same_line_pad = st.lists(st.sampled_from([" ", "\t", "\u00a0", "\u2003"]), max_size=3).map("".join)


@FAST
@given(no_answer_tag, same_line_pad, st.sampled_from("ABCD"), same_line_pad, no_answer_tag, st.booleans())
def test_tolerant_accepts_whatever_strict_accepts_inside_tags(before, pad1, letter, pad2, after, tagged_gt):
    # Built so that the paper gives credit through its tag match (asserted, not assumed); the tolerant
    # reward must then give it too.
    s = f"{before}<answer>{pad1}{letter}{pad2}</answer>{after}"
    answer = f"<answer> {letter} </answer>" if tagged_gt else letter
    assert REF_ANSWER.search(s) and paper_accuracy(s, answer) == 1.0
    assert get_reward("accuracy")([s], [answer]) == [1.0]
    assert get_reward("accuracy_strict")([s], [answer]) == [1.0]


def test_tolerant_reads_the_first_answer_block_even_across_lines():
    # Where the two differ, on purpose: the paper's regex cannot cross a newline, so it skips a first
    # multi-line block and credits a later one; the tolerant reward reads the first block (listing
    # several answers must not pay), which here is empty.
    s = "<answer>\n</answer><answer>B</answer>"
    assert paper_accuracy(s, "B") == 1.0 and get_reward("accuracy_strict")([s], ["B"]) == [1.0]
    assert get_reward("accuracy")([s], ["B"]) == [0.0]
    assert get_reward("accuracy")(["<answer>\nB\n</answer>"], ["B"]) == [1.0]


@FAST
@given(maybe_text)
def test_eval_parser_total(s):
    out = extract_eval_answer(s)
    assert out is None or (isinstance(out, str) and re.fullmatch(r"\w+", out))


# -----------------------------------------------------------------------------
# adversarial inputs: correctness first, with a generous time bound per call

MB = 1 << 20


def _adversarial_cases():
    n = MB // len("</think><answer>")
    return [
        # (name, text, expected think-format, expected strict extraction)
        ("unclosed_pairs", "<think>" + "</think><answer>" * n, False, None),
        ("unclosed_pairs_closed_at_end", "<think>" + "</think><answer>" * n + "</answer>", True,
         "</think><answer>" * (n - 1)),
        ("many_unclosed_answer", "<answer>" * (MB // 8), False, None),
        ("many_unclosed_answer_then_close", "<answer>" * (MB // 8) + "B</answer>", False,
         "<answer>" * (MB // 8 - 1) + "B"),
        ("many_unclosed_think", "<think>" * (MB // 7) + "<answer>B</answer>", False, "B"),
        ("nested", "<think>" * 5000 + "</think>" * 5000 + " <answer>" * 5000 + "B" + "</answer>" * 5000,
         True, " <answer>" * 4999 + "B"),
        ("newline_separated_opens", "<answer>x\n" * (MB // 10) + "<answer>B</answer>", False, "B"),
        ("spaces_between", "<think>" + "</think>" + " " * MB + "x<answer>B</answer>", False, "B"),
        ("nul_and_unicode", "\x00思<think>\x00</think>\u3000<answer>é</answer>" * (MB // 40), False, "é"),
        ("plain_1mb", "a" * MB, False, None),
    ]


@pytest.mark.parametrize("case", _adversarial_cases(), ids=lambda c: c[0])
def test_adversarial_linear_and_correct(case):
    _, text, think_ok, strict_inner = case
    t0 = time.perf_counter()
    assert is_think_format(text) == think_ok
    assert extract_answer_strict(text) == strict_inner
    for name in available_rewards():
        out = get_reward(name)([text], ["B"])
        assert out[0] in (0.0, 1.0)
    extract_eval_answer(text)
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0 * (len(available_rewards()) + 3), f"too slow: {elapsed:.2f}s"


def test_adversarial_accuracy_values():
    # Strict: no match crosses a newline, so the first match is on the last line.
    text = "<answer>x\n" * 50000 + "<answer>B</answer>"
    assert get_reward("accuracy_strict")([text], ["B"]) == [1.0]
    # Tolerant extraction crosses newlines: content starts with "x\n<answer>x..." -> not a letter.
    assert get_reward("accuracy")([text], ["B"]) == [0.0]
    long_ok = "<think>" + "y" * MB + "</think> <answer>(B) because</answer>"
    assert get_reward("format")([long_ok], ["B"]) == [1.0]
    assert get_reward("accuracy")([long_ok], ["B"]) == [1.0]
    assert get_reward("accuracy_strict")([long_ok], ["B"]) == [0.0]
