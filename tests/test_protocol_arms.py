"""The protocol's arms: row names, prompt-style configs, the SFT arm and style rows driven
end to end with fake train / SFT / eval functions that write real trace rows (no Ray, no
model), the test-domain columns, and the in-domain vs out-of-domain table."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.errors import UserError
from pipelines.protocol import arms as A
from pipelines.protocol import matrix as M
from pipelines.protocol import run as P
from tests.test_protocol import write_eval


def _dict(*overrides):
    from pipelines.config import load_config, to_dict

    return to_dict(load_config("smoke", list(overrides)))


def test_row_names_round_trip():
    cases = [("base", ("baseline", None, None)), ("sft", ("baseline", None, None)),
             ("base [think]", ("baseline", None, "think")), ("sft:CT", ("sft", "CT", None)),
             ("fundus photography", ("grpo", "fundus photography", None)),
             ("lesion grading [think_after]", ("grpo", "lesion grading", "think_after")),
             ("sft:X-ray [think]", ("sft", "X-ray", "think"))]
    for name, want in cases:
        assert tuple(A.parse_row(name)) == want, name
        arm, dom, style = want
        if name != "sft":
            assert A.row_name(arm, dom, style) == name
    assert A.base_row(None) == "base" and A.base_row("think") == "base [think]"


def test_plan_rows_orders_baselines_sft_then_grpo_by_style():
    rows = A.plan_rows(["CT", "MRI"], ["nothink", "think"], sft_arm=True, sft_model=True)
    assert rows == ["base", "sft", "base [think]", "sft:CT", "sft:MRI", "CT", "MRI", "CT [think]", "MRI [think]"]
    assert A.plan_rows(["CT"], ["think"], sft_arm=False, sft_model=False) == ["base", "CT"]


def test_parse_styles():
    assert A.parse_styles(None, "nothink") == ["nothink"]
    assert A.parse_styles("think, think-after,nothink", "nothink") == ["nothink", "think", "think_after"]
    # the config's own style is the plain-named one only when it was asked for
    assert A.parse_styles("think,think_after", "nothink") == ["think", "think_after"]
    with pytest.raises(UserError, match="unknown prompt style 'cot'"):
        A.parse_styles("think,cot", "think")


def test_styled_config_swaps_prompts_format_reward_and_warmstart_dir():
    base = _dict("data.prompt_style=nothink", "sft.warmstart_dir=outputs/w",
                 "reward.functions={format_nothink: 0.5, accuracy_strict: 1.0}")
    t = A.styled_config(base, "think_after")
    assert t["data"]["prompt_style"] == t["eval"]["prompt_style"] == t["sft"]["prompt_style"] == "think_after"
    assert t["reward"]["functions"] == {"accuracy_strict": 1.0, "format_think_after": 0.5}
    assert t["sft"]["warmstart_dir"] == "outputs/w-think_after"
    same = A.styled_config(base, "nothink")
    assert same["sft"]["warmstart_dir"] == "outputs/w"
    assert same["reward"]["functions"] == {"accuracy_strict": 1.0, "format_nothink": 0.5}
    assert base["data"]["prompt_style"] == "nothink"  # not modified in place
    with pytest.raises(UserError, match="format_strict"):
        A.styled_config(_dict("reward.functions={format_strict: 1.0, accuracy_strict: 1.0}"), "think")


def _fake_eval(calls: list):
    """Reads its test domains from the eval config it is given (the columns); a row trained on
    X answers 8/10 of X, base 3/10 everywhere, SFT 9/10 in-domain and 2/10 out, think rows +1."""
    def fake_eval(model, cfg_dict, out: Path, row, workers, max_samples):
        cols = cfg_dict["data"]["question_types"]
        calls.append((row, list(cols), cfg_dict["eval"]["prompt_style"], model))
        arm, dom, style = A.parse_row(row)
        rows = []
        for c in cols:
            k = 3 if arm == "baseline" else (9 if c == dom else 2) if arm == "sft" else (8 if c == dom else 4)
            k += 1 if style == "think" else 0
            for i in range(10):
                rows.append({"run": row, "kind": "eval", "prompt_id": f"{c}-{i}", "answer": "A", "modality": "CT",
                             "question_type": c, "source": "fake", "correct": i < k,
                             "predicted": "A" if i < k else "B", "format_ok": True, "completion": "<answer>A</answer>"})
        return write_eval(out, rows)

    return fake_eval


def test_sft_arm_and_prompt_styles_end_to_end(tmp_path):
    from pipelines.config import load_config

    cfg = load_config("smoke", ["data.prompt_style=nothink", "reward.functions={format_nothink: 1.0, "
                                "accuracy_strict: 1.0}"])
    grpo_calls, sft_calls, eval_calls = [], [], []

    def fake_train(d):
        grpo_calls.append((d["data"]["question_types"], d["data"]["prompt_style"], d["reward"]["functions"]))
        return {"final_model": str(Path(d["trainer"]["output_dir"]) / "hf"), "total_steps": d["trainer"]["total_steps"]}

    def fake_sft(d):
        sft_calls.append((d["data"]["question_types"], d["sft"]["warmstart_dir"]))
        return {"final_model": str(Path(d["trainer"]["output_dir"]) / "sft" / "hf"), "records": 7}

    cols = ["modality recognition", "disease diagnosis", "lesion grading"]
    proto = tmp_path / "proto"
    m = P.run_protocol(cfg, "cross-task", protocol_dir=proto, domains=cols[:2], test_domains=cols, steps=2,
                       sequential=True, train_fn=fake_train, sft_fn=fake_sft, eval_fn=_fake_eval(eval_calls),
                       sft_arm=True, prompt_styles=["nothink", "think"])
    assert m["rows"] == ["base", "base [think]", "sft:modality recognition", "sft:disease diagnosis",
                         "modality recognition", "disease diagnosis", "modality recognition [think]",
                         "disease diagnosis [think]"]
    assert m["cols"] == cols
    assert sft_calls == [(["modality recognition"], ""), (["disease diagnosis"], "")]
    assert [c[:2] for c in grpo_calls] == [(["modality recognition"], "nothink"), (["disease diagnosis"], "nothink"),
                                           (["modality recognition"], "think"), (["disease diagnosis"], "think")]
    assert grpo_calls[2][2] == {"accuracy_strict": 1.0, "format": 1.0}  # the think rows get the think format reward
    assert all(c[1] == cols for c in eval_calls)  # every row evaluated on exactly the columns asked for
    assert {c[0]: c[2] for c in eval_calls}["base [think]"] == "think"
    assert {c[0]: c[3] for c in eval_calls}["sft:disease diagnosis"].endswith("sft/hf")

    s = m["summary"]
    assert s["sft:modality recognition"]["in_domain"] == pytest.approx(0.9)
    assert s["sft:modality recognition"]["out_of_domain_mean"] == pytest.approx(0.2)
    assert s["disease diagnosis"]["in_domain"] == pytest.approx(0.8)
    assert s["disease diagnosis"]["out_of_domain_mean"] == pytest.approx(0.4)
    assert s["base"]["in_domain"] is None
    # improvement against each row's own base: think rows against base [think] (0.4), others against base (0.3)
    assert m["improvement"]["modality recognition [think]"]["modality recognition"] == pytest.approx(0.9 - 0.4)
    assert m["improvement"]["sft:disease diagnosis"]["lesion grading"] == pytest.approx(0.2 - 0.3)
    assert "base" not in m["improvement"] and "base [think]" not in m["improvement"]

    report = (proto / "report.md").read_text()
    assert "## In-domain vs out-of-domain (%)" in report
    assert "| sft:modality recognition | 90.0 | 20.0 | 30.0 | 30.0 |" in report
    assert "| modality recognition [think] | 90.0 | 50.0 | 40.0 | 40.0 |" in report
    assert (proto / "in_vs_out.png").stat().st_size > 100
    saved = json.loads((proto / "matrix.json").read_text())
    again = M.recompute_from_traces(proto)
    for key in ("rows", "cols", "accuracy", "improvement", "summary"):
        assert again[key] == saved[key], key


def test_cli_rejects_bad_test_domains_and_styles(tmp_path, capsys):
    from pipelines.cli.main import main

    rc = main(["protocol", "cross-task", "smoke", "--test-domains", "grading,colour", "--out", str(tmp_path)])
    assert rc == 2 and "--test-domains: unknown question type 'colour'" in capsys.readouterr().err
    rc = main(["protocol", "cross-task", "smoke", "--prompt-styles", "think,long", "--out", str(tmp_path)])
    assert rc == 2 and "unknown prompt style 'long'" in capsys.readouterr().err
