"""The protocol's arms and how their rows are named.

A row of the matrix is one model evaluated on every test domain. Its name says how the
model was made:

    base            the model every row starts from (after the shared format warm-start, if any)
    sft             an SFT model given with ``--sft-model`` (trained elsewhere)
    sft:CT          SFT on the ground-truth letters of CT's training records (``--sft-arm``)
    CT              GRPO on CT's training records
    CT [think]      GRPO on CT with the think prompt; ``base [think]`` is its own starting point

The bracket appears only for a prompt style other than the config's, so a protocol
without ``--prompt-styles`` has the plain row names it always had.
"""
from __future__ import annotations

import copy
from typing import NamedTuple, Optional

from pipelines.errors import UserError
from pipelines.prompts import PROMPT_STYLES
from pipelines.protocol import BASE, KINDS, SFT

SFT_PREFIX = "sft:"
GRPO, SFT_ARM, BASELINE = "grpo", "sft", "baseline"
# The format reward that matches each prompt style (the paper's plain format rule for each layout).
FORMAT_REWARD = {"think": "format", "nothink": "format_nothink", "think_after": "format_think_after"}


class Row(NamedTuple):
    arm: str  # grpo | sft | baseline
    domain: Optional[str]  # the training domain; None for base / an external SFT model
    style: Optional[str]  # the prompt style when it is not the config's; None otherwise


def row_name(arm: str, domain: Optional[str], style: Optional[str] = None) -> str:
    if arm == BASELINE:
        name = domain or BASE
    elif arm == SFT_ARM:
        name = f"{SFT_PREFIX}{domain}"
    else:
        name = str(domain)
    return f"{name} [{style}]" if style else name


def parse_row(name: str) -> Row:
    """The inverse of ``row_name`` (``base``/``sft`` baselines have no domain)."""
    style = None
    if name.endswith("]") and " [" in name:
        name, style = name[:-1].rsplit(" [", 1)
    if name in (BASE, SFT):
        return Row(BASELINE, None, style)
    if name.startswith(SFT_PREFIX):
        return Row(SFT_ARM, name[len(SFT_PREFIX):], style)
    return Row(GRPO, name, style)


def base_row(style: Optional[str]) -> str:
    """The row a row of this style is compared with (improvement over base)."""
    return row_name(BASELINE, None, style)


def parse_styles(spec: Optional[str], main: str) -> list[str]:
    """``--prompt-styles think,nothink`` -> styles, the config's own first (its rows keep plain names)."""
    if not spec:
        return [main]
    styles = []
    for s in (x.strip() for x in spec.split(",")):
        if not s:
            continue
        s = s.replace("-", "_")
        if s not in PROMPT_STYLES:
            raise UserError(f"--prompt-styles: unknown prompt style {s!r}; choose from {', '.join(PROMPT_STYLES)}")
        if s not in styles:
            styles.append(s)
    if not styles:
        raise UserError("--prompt-styles is empty")
    return [main] + [s for s in styles if s != main] if main in styles else styles


def styled_config(base: dict, style: str) -> dict:
    """``base`` with every prompt (training, warm-start, evaluation) in ``style`` and the
    format reward swapped for that layout's, at the same weight."""
    d = copy.deepcopy(base)
    d["data"]["prompt_style"] = d["eval"]["prompt_style"] = d["sft"]["prompt_style"] = style
    fns = dict(d["reward"]["functions"])
    plain = [k for k in fns if k in FORMAT_REWARD.values()]
    strict = [k for k in fns if k.startswith("format_strict")]
    if strict:
        # strict format rules exist for think / nothink only; swapping them silently would change the experiment
        raise UserError(f"--prompt-styles: reward.functions has {strict[0]}; use the plain format rewards "
                        f"({', '.join(FORMAT_REWARD.values())}) so each style gets its own")
    # The weight of the config's own layout's format reward; the other layouts' are dropped (a YAML
    # `reward.functions` is merged into the default {format, accuracy_strict}, so a no-think config
    # also carries the think `format`, a constant 0 on no-think completions).
    own = FORMAT_REWARD.get(str(base["data"]["prompt_style"]))
    weight = fns[own] if own in fns else (fns[plain[0]] if plain else 1.0)
    for k in plain:
        fns.pop(k)
    fns[FORMAT_REWARD[style]] = weight
    d["reward"]["functions"] = fns
    if d["sft"]["warmstart_dir"] and style != base["data"]["prompt_style"]:
        d["sft"]["warmstart_dir"] = f"{str(d['sft']['warmstart_dir']).rstrip('/')}-{style}"
    return d


def domain_filter(base: dict, kind: str, domains: list[str]) -> dict:
    """``base`` restricted to ``domains`` on the protocol's dimension; the config's filter on
    the other dimension (e.g. ``data.question_types`` in a cross-modality study) is kept."""
    d = copy.deepcopy(base)
    key = "modalities" if KINDS[kind] == "modality" else "question_types"
    d["data"][key] = list(domains)
    return d


def plan_rows(domains: list[str], styles: list[str], *, sft_arm: bool, sft_model: bool) -> list[str]:
    """Every row in report order: baselines, the SFT arm, GRPO in the config's style, then
    GRPO in each other style (with its own base)."""
    main, others = styles[0], styles[1:]
    rows = [BASE] + ([SFT] if sft_model else [])
    rows += [base_row(s) for s in others]
    rows += [row_name(SFT_ARM, d) for d in domains] if sft_arm else []
    rows += list(domains)
    rows += [row_name(GRPO, d, s) for s in others for d in domains]
    assert main not in others
    return rows
