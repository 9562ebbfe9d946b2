"""Throughput of the named rewards, and the linear scanners vs the paper's naive regexes.

    .venv/bin/python bench/bench_rewards.py [--quick] [--naive-timeout 10]

Table 1: completions/s for every registered reward on typical (~300 chars),
long (100 KB) and adversarial (1 MB, thousands of unclosed tags) completions.
Table 2: seconds per call on adversarial inputs of growing size, our scanner vs
``re.fullmatch`` / ``re.search`` with the paper's patterns.  The naive regex runs
in a child process with a timeout, so a quadratic blow-up cannot hang the bench.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rewards import available_rewards, get_reward  # noqa: E402
from rewards.accuracy import CHOICE_LETTERS, STRICT_ANSWER_PATTERN, extract_answer_strict  # noqa: E402
from rewards.format import THINK_PATTERN, is_think_format  # noqa: E402

KB, MB = 1 << 10, 1 << 20


def typical_completions(n: int, rng: random.Random) -> list[str]:
    words = "the lesion shows increased opacity in the left lower lobe consistent with pneumonia".split()
    out = []
    for _ in range(n):
        think = " ".join(rng.choice(words) for _ in range(rng.randint(30, 45)))
        letter = rng.choice(CHOICE_LETTERS[:4])
        form = rng.random()
        if form < 0.6:
            out.append(f"<think>{think}</think> <answer>{letter}</answer>")
        elif form < 0.8:
            out.append(f"<think>{think}</think>\n<answer>({letter}) {rng.choice(words)}</answer>")
        elif form < 0.9:
            out.append(f"{think} The answer is {letter}.")
        else:
            out.append(f"<think>{think} <answer>{letter}")  # truncated at max tokens
    return out


def long_completion(size: int, i: int) -> str:
    body = ("step %d: the image shows a hyperdense region. " % i) * (size // 45)
    return f"<think>{body[: size - 40]}</think> <answer>B</answer>"


def adversarial(kind: str, size: int) -> str:
    if kind == "unclosed_pairs":  # worst case for fullmatch(<think>.*?</think>\s*<answer>.*?</answer>)
        return "<think>" + "</think><answer>" * (size // 16)
    if kind == "unclosed_answer":  # worst case for search(<answer>(.*?)</answer>)
        return "<answer>" * (size // 8)
    if kind == "nested":
        k = size // 40
        return "<think>" * k + "</think>" * k + " <answer>" * k + "B" + "</answer>" * k
    raise ValueError(kind)


ADV_KINDS = ("unclosed_pairs", "unclosed_answer", "nested")


def rate(fn, completions, answers, min_time=0.3) -> float:
    """completions/s, repeating the batch until at least min_time has passed."""
    fn(completions[:2], answers[:2])  # warm-up
    n, t0 = 0, time.perf_counter()
    while True:
        fn(completions, answers)
        n += len(completions)
        dt = time.perf_counter() - t0
        if dt >= min_time:
            return n / dt


def _naive_worker(which: str, text: str, q) -> None:
    t0 = time.perf_counter()
    if which == "format":
        THINK_PATTERN.fullmatch(text)
    else:
        STRICT_ANSWER_PATTERN.search(text)
    q.put(time.perf_counter() - t0)


def naive_time(which: str, text: str, timeout: float) -> float | None:
    """Seconds for one naive regex call, or None if it ran past `timeout` (child is killed)."""
    ctx = mp.get_context("fork" if sys.platform != "win32" else "spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_naive_worker, args=(which, text, q))
    p.start()
    p.join(timeout)
    if p.is_alive():
        p.terminate()
        p.join()
        return None
    return q.get()


def ours_time(which: str, text: str) -> float:
    fn = is_think_format if which == "format" else extract_answer_strict
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        fn(text)
        best = min(best, time.perf_counter() - t0)
    return best


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def fmt_time(x: float | None, timeout: float) -> str:
    if x is None:
        return f"> {timeout:.0f} s"
    return f"{x * 1e3:.3f} ms" if x < 1 else f"{x:.2f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller batches, naive regex up to 100 KB")
    ap.add_argument("--naive-timeout", type=float, default=10.0, help="seconds per naive regex call")
    args = ap.parse_args()
    rng = random.Random(0)

    workloads = {
        "typical ~300B": typical_completions(2000 if args.quick else 20000, rng),
        "long 100KB": [long_completion(100 * KB, i) for i in range(10 if args.quick else 50)],
        "adversarial 1MB": [adversarial(k, MB) for k in ADV_KINDS],
    }
    avg_len = {k: sum(map(len, v)) / len(v) for k, v in workloads.items()}
    print(f"python {sys.version.split()[0]}; workloads: "
          + ", ".join(f"{k} (n={len(v)}, avg {avg_len[k]:,.0f} chars)" for k, v in workloads.items()))
    print()
    print("Table 1: completions/s per named reward")
    names = available_rewards()
    header = f"{'reward':<20}" + "".join(f"{k:>18}" for k in workloads)
    print(header)
    print("-" * len(header))
    for name in names:
        fn = get_reward(name)
        cells = []
        for comps in workloads.values():
            answers = ["B"] * len(comps)
            cells.append(fmt_rate(rate(fn, comps, answers)))
        print(f"{name:<20}" + "".join(f"{c:>18}" for c in cells))

    print()
    print("Table 2: seconds per call, linear scanner vs the paper's regex (naive, timeout "
          f"{args.naive_timeout:.0f} s)")
    sizes = [10 * KB, 100 * KB] if args.quick else [10 * KB, 100 * KB, 1 * MB]
    cases = [("format", "unclosed_pairs", "fullmatch think pattern"),
             ("format", "nested", "fullmatch think pattern"),
             ("strict", "unclosed_answer", "search <answer>(.*?)</answer>")]
    header = f"{'check':<34}{'input':<18}{'size':>8}{'ours':>14}{'naive re':>14}{'speedup':>14}"
    print(header)
    print("-" * len(header))
    for which, kind, label in cases:
        for size in sizes:
            text = adversarial(kind, size)
            ours = ours_time(which, text)
            naive = naive_time(which, text, args.naive_timeout)
            speed = f"{naive / ours:,.0f}x" if naive is not None and ours > 0 else "-"
            size_s = f"{size // KB} KB" if size < MB else f"{size // MB} MB"
            print(f"{label:<34}{kind:<18}{size_s:>8}{fmt_time(ours, 0):>14}"
                  f"{fmt_time(naive, args.naive_timeout):>14}{speed:>14}")
    # Sanity on normal inputs: the scanner and the regex agree and run at similar speed.
    typical = workloads["typical ~300B"]
    t0 = time.perf_counter()
    ours = [is_think_format(c) for c in typical]
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = [bool(THINK_PATTERN.fullmatch(c)) for c in typical]
    t_ref = time.perf_counter() - t0
    assert ours == ref, "scanner disagrees with the paper's regex on typical completions"
    print(f"{'fullmatch think pattern':<34}{'typical (per call)':<18}{'~300 B':>8}"
          f"{fmt_time(t_ours / len(typical), 0):>14}{fmt_time(t_ref / len(typical), 0):>14}"
          f"{t_ref / t_ours:>13.1f}x")


if __name__ == "__main__":
    main()
