"""A GPU cost model of one GRPO step, and the tables of docs/performance.md.

    python bench/cost_model.py            # every table of the doc
    python bench/cost_model.py --json     # the same figures as JSON

Step time from the rollout and learner GPU counts, the model, G, prompts per step and
prompt/completion lengths. Each phase is a roofline term times an efficiency:

- learner: FLOPs = (6 train + 2 gradient-checkpoint recompute [+ 2 old log-probs]) x N x
  tokens + 2 x N x tokens for the reference model, over L GPUs at ``train_mfu`` of peak;
- rollout: prefill FLOPs (the prompt once per group: vLLM shares it over the G samples)
  at ``prefill_mfu``, then decoding, one step per completion token, each step reading the
  weights and the KV cache from HBM at ``decode_bw_eff`` of its bandwidth (or the step's
  FLOPs, whichever is slower), plus vLLM's per-step overhead; the batch runs until its
  longest completion, with a tail of few sequences after the mean length;
- push: the bf16 weights over NVLink (nccl) or, colocated, the engines' sleep/wake and
  the learner's offload (PCIe) -- the ``switch`` term;
- reward and driver: CPU time per completion and per step, as measured on CPU here.

Constants are either hardware data sheets (H100 SXM: 989 TFLOP/s dense bf16, 3.35 TB/s
HBM3), measured on this project's CPU runs (reward and driver time, the shared-prefix
token saving), or fitted once to EasyR1's published Qwen2.5-VL-7B figure on 8xH100
(``calibrate``): nothing else is tuned. The model ignores attention FLOPs (small below
~2k tokens at these widths) and communication inside the learner (ZeRO-2 all-reduce of
gradients overlaps the backward on one NVLink node).
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class GPU:
    name: str
    peak_flops: float  # dense bf16
    hbm_bw: float  # bytes/s
    link_bw: float  # bytes/s, what an NCCL broadcast reaches inside one node
    pcie_bw: float  # bytes/s, host <-> device (offload)


H100 = GPU("H100 SXM", 989e12, 3.35e12, 150e9, 25e9)


@dataclass(frozen=True)
class Model:
    name: str
    lm_params: float
    vision_params: float
    layers: int
    kv_heads: int
    head_dim: int

    @property
    def params(self) -> float:
        return self.lm_params + self.vision_params

    @property
    def kv_bytes_per_token(self) -> float:  # K and V, every layer, bf16
        return 2 * self.layers * self.kv_heads * self.head_dim * 2


QWEN2VL_2B = Model("Qwen2-VL-2B", 1.54e9, 0.675e9, 28, 2, 128)
QWEN25VL_3B = Model("Qwen2.5-VL-3B", 3.09e9, 0.67e9, 36, 2, 128)
QWEN25VL_7B = Model("Qwen2.5-VL-7B", 7.62e9, 0.67e9, 28, 4, 128)


@dataclass(frozen=True)
class Job:
    prompts: int  # per step
    group: int  # G
    prompt_tokens: float  # mean, image tokens included
    image_tokens: float  # of which the vision tower encodes (4 patches each before the 2x2 merge)
    completion_mean: float
    completion_max: float
    recompute_old_logprobs: bool = False  # verl/EasyR1 recompute them; this project takes vLLM's
    gradient_checkpointing: bool = True
    reference: bool = True  # beta > 0
    shared_prefix: bool = False  # the learner computes each group's prompt once (issue 18 item 2)

    @property
    def samples(self) -> int:
        return self.prompts * self.group


# The paper's config (configs/medr1_qwen2vl_2b.yaml): 32 prompts x G=4, prompts <= 1024 tokens with
# images at max_pixels 401408 (<= 512 image tokens; OmniMedVQA images reach it), completions <= 256.
PAPER = Job(prompts=32, group=4, prompt_tokens=620, image_tokens=512, completion_mean=160, completion_max=256)
# EasyR1's example (examples/config.yaml): 512 prompts x n=5, colocated on 8 GPUs, old log-probs recomputed.
# Lengths are this model's assumption for geometry VQA (small images, ~450-token answers, up to 2048).
EASYR1 = Job(prompts=512, group=5, prompt_tokens=350, image_tokens=150, completion_mean=450, completion_max=2048,
             recompute_old_logprobs=True)


@dataclass(frozen=True)
class Efficiency:
    train_mfu: float = 0.38  # fitted to EasyR1's 120-145 s/step (calibrate())
    prefill_mfu: float = 0.5
    decode_bw_eff: float = 0.6  # of HBM bandwidth, weights + KV reads per decode step
    decode_mfu: float = 0.5
    decode_step_overhead_s: float = 3e-3  # vLLM scheduler + sampling per decode step (CUDA graphs on)
    tail_fraction: float = 0.1  # sequences still decoding after the mean completion length
    push_fixed_s: float = 0.5  # start/finish of vLLM's weight transfer, layer-wise reload, cache reset
    switch_s_per_gb: float = 0.0  # set from the GPU's PCIe bandwidth (colocated offload), see phases()
    # Measured on CPU here (issue 6/18 phase times): per completion (reward scoring, trace row) and per step.
    reward_s_per_completion: float = 2e-4
    driver_s_per_step: float = 0.04  # issue 6's step minus its phases (cpu_calibration)


# CPU phase times measured on this 2-core machine (issue 18's side-by-side run: 8 prompts x G=4, the think
# prompt = 145 tokens with 16 image tokens, <= 64 sampled tokens; issue 6: the embedded default's step).
TINY_CPU = Model("tiny (4.3M)", 3.49e6, 0.81e6, 4, 2, 32)
MEDIUM_CPU = Model("medium (56M)", 51.4e6, 4.25e6, 8, 4, 64)
CPU_JOB = Job(prompts=8, group=4, prompt_tokens=145, image_tokens=16, completion_mean=64, completion_max=64,
              gradient_checkpointing=False)
CPU_MEASURED = {"tiny (4.3M)": {"rollout": 1.02, "learner": 2.97, "push": 0.16},
                "medium (56M)": {"rollout": 3.85, "learner": 25.5}}
DEFAULT_STEP = {"step": 6.2, "rollout": 0.41, "learner": 5.6, "push": 0.15}  # issue 6: driver = what is left


def cpu_calibration() -> dict:
    """What the CPU runs say about the model's terms: the learner's cost follows N x tokens (effective
    FLOP/s per model size), the shared prefix's token saving at that shape, the driver's share."""
    rows = []
    for m in (TINY_CPU, MEDIUM_CPU):
        meas = CPU_MEASURED[m.name]
        flops = learner_flops(m, CPU_JOB)
        rows.append({"model": m.name, "learner s": meas["learner"], "learner GFLOP": flops / 1e9,
                     "learner GFLOP/s": flops / meas["learner"] / 1e9, "rollout s": meas["rollout"],
                     "learner share": meas["learner"] / (meas["learner"] + meas["rollout"])})
    per_sample = learner_flops(MEDIUM_CPU, CPU_JOB)
    shared = learner_flops(MEDIUM_CPU, replace(CPU_JOB, shared_prefix=True))
    d = DEFAULT_STEP
    return {"rows": rows, "shared_prefix_flop_ratio": per_sample / shared,
            "driver_s_per_step": d["step"] - d["rollout"] - d["learner"] - d["push"]}


def learner_flops(m: Model, j: Job) -> float:
    text = j.prompts * j.prompt_tokens + j.samples * j.completion_mean if j.shared_prefix \
        else j.samples * (j.prompt_tokens + j.completion_mean)
    train = 6 + (2 if j.gradient_checkpointing else 0) + (2 if j.recompute_old_logprobs else 0)
    passes = train + (2 if j.reference else 0)
    images = (j.prompts if j.shared_prefix else j.samples) * j.image_tokens * 4  # patches through the ViT
    return passes * (m.lm_params * text + m.vision_params * images)


def rollout_seconds(m: Model, j: Job, gpus: int, gpu: GPU, e: Efficiency) -> dict:
    prefill = 2 * (m.lm_params * j.prompts * j.prompt_tokens + m.vision_params * j.prompts * j.image_tokens * 4)
    t_prefill = prefill / (gpus * gpu.peak_flops * e.prefill_mfu)
    per_gpu = j.samples / gpus
    weights = 2 * m.lm_params  # bf16, read once per decode step by each engine

    def step(seqs: float, context: float) -> float:
        mem = (weights + seqs * context * m.kv_bytes_per_token) / (gpu.hbm_bw * e.decode_bw_eff)
        flops = 2 * m.lm_params * seqs / (gpu.peak_flops * e.decode_mfu)
        return max(mem, flops) + e.decode_step_overhead_s

    ctx = j.prompt_tokens + j.completion_mean / 2
    t_main = j.completion_mean * step(per_gpu, ctx)
    tail = max(1.0, per_gpu * e.tail_fraction)
    t_tail = (j.completion_max - j.completion_mean) * step(tail, j.prompt_tokens + j.completion_max)
    return {"prefill": t_prefill, "decode": t_main + t_tail}


def phases(m: Model, j: Job, rollout_gpus: int, learner_gpus: int, gpu: GPU = H100, e: Efficiency = Efficiency(),
           colocated: bool = False) -> dict:
    """Seconds per phase and the step time (sync, and one-step-off async when not colocated)."""
    r = rollout_seconds(m, j, rollout_gpus, gpu, e)
    rollout = r["prefill"] + r["decode"]
    learner = learner_flops(m, j) / (learner_gpus * gpu.peak_flops * e.train_mfu)
    if colocated:
        # Engines sleep (weights offloaded, KV dropped) while the learner runs; the learner's shard of
        # bf16 weights + fp32 Adam moments (14 bytes/param) goes to the host and back over PCIe.
        push = e.push_fixed_s + 2 * m.params / gpu.hbm_bw
        switch = 2 * 14 * m.params / learner_gpus / gpu.pcie_bw + 2 * m.params * 2 / gpu.pcie_bw
    else:
        push = e.push_fixed_s + 2 * m.params / gpu.link_bw
        switch = 0.0
    cpu = e.reward_s_per_completion * j.samples + e.driver_s_per_step
    sync = rollout + learner + push + switch + cpu
    out = {"rollout": rollout, "prefill": r["prefill"], "decode": r["decode"], "learner": learner, "push": push,
           "switch": switch, "cpu": cpu, "sync": sync}
    out["async"] = sync if colocated else max(rollout + cpu, learner) + push
    tokens = j.samples * (j.prompt_tokens + j.completion_mean)
    out["tok_s_gpu"] = tokens / (sync * (rollout_gpus if colocated else rollout_gpus + learner_gpus))
    return out


def calibrate(base: Efficiency = Efficiency(), target_s: float = 132.5) -> Efficiency:
    """The one fitted constant: learner MFU so that EasyR1's example lands on the middle of its
    published 120-145 s/step (Qwen2.5-VL-7B, 8xH100, colocated). Bisection on a monotone function."""
    lo, hi = 0.05, 0.9
    for _ in range(60):
        mid = (lo + hi) / 2
        s = phases(QWEN25VL_7B, EASYR1, 8, 8, e=replace(base, train_mfu=mid), colocated=True)["sync"]
        lo, hi = (mid, hi) if s > target_s else (lo, mid)
    return replace(base, train_mfu=round((lo + hi) / 2, 3))


def splits(m: Model, j: Job, e: Efficiency, total: int = 8) -> list[dict]:
    rows = [{"split": f"colocated {total}+{total}", **phases(m, j, total, total, e=e, colocated=True)}]
    for r in range(1, total):
        rows.append({"split": f"{r} rollout + {total - r} learner", **phases(m, j, r, total - r, e=e)})
    return rows


def table(rows: list[dict], cols: list[str]) -> str:
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    fmt = [lambda v: v if isinstance(v, str) else (f"{v:.0f}" if v >= 100 else f"{v:.2f}")]
    return head + "\n".join("| " + " | ".join(fmt[0](r[c]) for c in cols) + " |" for r in rows)


def report() -> dict:
    e = calibrate()
    easy = phases(QWEN25VL_7B, EASYR1, 8, 8, e=e, colocated=True)
    paper = splits(QWEN2VL_2B, PAPER, e)
    paper_sp = splits(QWEN2VL_2B, replace(PAPER, shared_prefix=True), e)
    best = min(paper[1:], key=lambda r: r["async"])
    sweep = []
    for name, m in (("2B", QWEN2VL_2B), ("3B", QWEN25VL_3B), ("7B", QWEN25VL_7B)):
        for g in (4, 8):
            for lc in (256, 1024):
                j = replace(PAPER, group=g, completion_max=lc, completion_mean=lc * 0.625)
                rows = splits(m, j, e)
                b = min(rows[1:], key=lambda r: r["async"])
                sweep.append({"model": name, "G": str(g), "max tokens": str(lc), "colocated s": rows[0]["sync"],
                              "best split": b["split"], "sync s": b["sync"], "async s": b["async"],
                              "rollout s": b["rollout"], "learner s": b["learner"]})
    # How robust the recommended split is to the constants the published figures do not pin down.
    sensitivity = []
    slow_decode = calibrate(replace(e, decode_bw_eff=e.decode_bw_eff / 2,
                                    decode_step_overhead_s=2 * e.decode_step_overhead_s))
    for label, eff in (("as calibrated", e), (f"decoding 2x slower, MFU refitted {slow_decode.train_mfu}", slow_decode),
                       ("learner MFU 0.40 (no offload)", replace(e, train_mfu=0.40))):
        for sp in (False, True):
            rows = splits(QWEN2VL_2B, replace(PAPER, shared_prefix=sp), eff)
            sensitivity.append({"constants": label, "shared prefix": "yes" if sp else "no",
                                "colocated s": rows[0]["sync"],
                                "best sync": min(rows[1:], key=lambda r: r["sync"])["split"],
                                "best async": min(rows[1:], key=lambda r: r["async"])["split"],
                                "4+4 sync s": rows[4]["sync"], "4+4 async s": rows[4]["async"]})
    return {"efficiency": asdict(e), "cpu": cpu_calibration(), "sensitivity": sensitivity, "easyr1": easy,
            "paper_splits": paper, "paper_splits_shared_prefix": paper_sp,
            "paper_best": best, "sweep": sweep,
            "verl_one_step_off_gain": {r["split"]: r["sync"] / r["async"] - 1 for r in paper[1:]}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rep = report()
    if args.json:
        print(json.dumps(rep, indent=2))
        return 0
    e, easy, cpu = rep["efficiency"], rep["easyr1"], rep["cpu"]
    print("CPU phase times (2 cores, 8 prompts x G=4, 145-token prompts, 64 tokens) against the learner term:\n")
    print(table(cpu["rows"], ["model", "rollout s", "learner s", "learner GFLOP", "learner GFLOP/s", "learner share"]))
    print(f"\nshared prefix at that shape: {cpu['shared_prefix_flop_ratio']:.2f}x fewer learner FLOPs; "
          f"driver time per step {cpu['driver_s_per_step']:.2f} s\n")
    print(f"calibration: learner MFU {e['train_mfu']:.3f} puts EasyR1's Qwen2.5-VL-7B example (512 x n=5, 8xH100, "
          f"colocated) at {easy['sync']:.0f} s/step (published 120-145) and {easy['tok_s_gpu']:.0f} tok/s/GPU "
          f"(published 1,600-2,000); rollout {easy['rollout']:.0f} s, learner {easy['learner']:.0f} s, "
          f"switch {easy['switch']:.1f} s\n")
    cols = ["split", "rollout", "learner", "push", "sync", "async", "tok_s_gpu"]
    print("The paper's config (Qwen2-VL-2B, 32 prompts x G=4, 620-token prompts, completions 160 mean / 256 max), "
          "seconds per step on one 8xH100 node:\n")
    print(table(rep["paper_splits"], cols))
    print("\nThe same with the learner's shared-prefix forward (each group's prompt once):\n")
    print(table(rep["paper_splits_shared_prefix"], cols))
    print("\nModel size, G and completion length (best disaggregated split by async step time):\n")
    print(table(rep["sweep"], ["model", "G", "max tokens", "colocated s", "best split", "sync s", "async s",
                               "rollout s", "learner s"]))
    print("\nSensitivity of the paper config's best split:\n")
    print(table(rep["sensitivity"], ["constants", "shared prefix", "colocated s", "best sync", "best async",
                                     "4+4 sync s", "4+4 async s"]))
    gains = rep["verl_one_step_off_gain"]
    best = rep["paper_best"]["split"]
    print(f"\none-step-off async gain at the best split ({best}): {100 * gains[best]:.0f}% "
          f"(verl reports +23-40%); at 4+4: {100 * gains['4 rollout + 4 learner']:.0f}%; over all splits "
          f"{100 * min(gains.values()):.0f}-{100 * max(gains.values()):.0f}%")
    return 0 if math.isfinite(rep["paper_best"]["async"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
