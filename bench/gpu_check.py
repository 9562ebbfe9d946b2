"""The GPU path, checked on one machine with one or more GPUs (`make gpu-check`).

Runs the smoke config through the real `medr1 train` on the GPUs, one case at a time,
each a few minutes on a locally built model (`--size tiny` or `medium`, ~60M):

  object_store   rollout and learner on separate GPUs (or halves of one), bf16
  nccl           vLLM's NCCL engine, learner rank 0 -> rollout GPUs        (>= 2 GPUs)
  ipc            colocated: learner and engine on one GPU, sleep/wake, vLLM's IPC engine
  gloo           the CPU-cluster protocol with GPU tensors
  shm            one node: the weights through a /dev/shm segment into the GPU engine
  tp2            tensor-parallel engine (2 GPUs in one rollout actor)       (>= 2 GPUs)

The GPU stack (requirements/gpu.txt) goes in its own .venv-gpu: `make gpu-check`.

Every push is verified (weight_sync.verify=every). Prints a table (passed, step time,
push seconds and GB/s, peak GPU memory) and writes it to outputs/gpu_check/results.json;
each case's full log is beside it. Exit status 0 only if every case that ran passed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "outputs" / "gpu_check"
MEDIUM = ["model.tiny.hidden_size=768", "model.tiny.num_attention_heads=12", "model.tiny.num_key_value_heads=4",
          "model.tiny.intermediate_size=2048", "model.tiny.num_hidden_layers=8", "model.tiny.vision_embed_dim=256",
          "model.tiny.vision_depth=4", "model.tiny.vision_num_heads=4"]


def cases(gpus: int) -> dict[str, list[str]]:
    one = "1" if gpus >= 2 else "0.5"  # separate GPUs when there are two, else halves of one
    split = [f"rollout.resources_per_worker.num_gpus={one}", f"learner.resources_per_worker.num_gpus={one}",
             "rollout.num_workers=1", "rollout.gpu_memory_utilization=0.3"]
    out = {
        "object_store": [*split, "weight_sync.backend=object_store"],
        "ipc": ["cluster.colocate=true", "rollout.resources_per_worker.num_gpus=0.5",
                "learner.resources_per_worker.num_gpus=0.5", "rollout.num_workers=1",
                "rollout.gpu_memory_utilization=0.3", "weight_sync.backend=ipc"],
        "gloo": [*split, "weight_sync.backend=gloo"],
        "shm": [*split, "weight_sync.backend=shm"],
    }
    if gpus >= 2:
        out["nccl"] = [*split, "weight_sync.backend=nccl"]
    if gpus >= 2:  # the learner on a third GPU (nccl) or, with two, on the CPU (object store)
        out["tp2"] = ["rollout.resources_per_worker.num_gpus=2", "rollout.tensor_parallel_size=2",
                      f"learner.resources_per_worker.num_gpus={1 if gpus >= 3 else 0}", "rollout.num_workers=1",
                      "rollout.gpu_memory_utilization=0.3",
                      f"weight_sync.backend={'nccl' if gpus >= 3 else 'object_store'}"]
    return out


class PeakMemory(threading.Thread):
    """Highest total GPU memory in use while a case runs (nvidia-smi, every 0.5 s)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak_mib, self._stop = 0, threading.Event()

    def run(self):
        while not self._stop.wait(0.5):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=10).stdout
                self.peak_mib = max(self.peak_mib, sum(int(x) for x in out.split() if x.strip().isdigit()))
            except (OSError, subprocess.SubprocessError):
                pass

    def stop(self) -> int:
        self._stop.set()
        return self.peak_mib


def run_case(name: str, overrides: list[str], size: list[str], steps: int, timeout_s: int) -> dict:
    out = OUT / name
    model = OUT / ("model-medium" if size else "model-tiny")
    args = [sys.executable, "-m", "pipelines.cli", "train", "configs/smoke.yaml", f"trainer.output_dir={out}",
            f"model.path={model}", f"data.prepared_dir={OUT / 'data'}", f"sft.warmstart_dir={model}-warm",
            f"trainer.total_steps={steps}", "model.dtype=bfloat16", "learner.bf16=true",
            "weight_sync.verify=every", "logging.progress=false", *size, *overrides]
    mem = PeakMemory()
    mem.start()
    t0 = time.perf_counter()
    with (OUT / f"{name}.log").open("w") as log:
        try:
            rc = subprocess.run(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    row = {"case": name, "passed": False, "wall_s": time.perf_counter() - t0, "peak_gpu_mib": mem.stop(), "rc": rc}
    metrics = out / "metrics.jsonl"
    steps_done = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []
    steps_done = [s for s in steps_done if "time_step" in s]
    if steps_done:
        row.update(step_s=statistics.median(s["time_step"] for s in steps_done),
                   push_s=statistics.median(s.get("push_seconds", 0.0) for s in steps_done),
                   push_gb_s=statistics.median(s.get("push_bytes_per_s", 0.0) for s in steps_done) / 1e9,
                   verified=all(s.get("weight_verified") == 1.0 for s in steps_done))
    row["passed"] = rc == 0 and len(steps_done) == steps and row.get("verified", False)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["tiny", "medium"], default="tiny")
    ap.add_argument("--cases", nargs="*", help="run only these (default: all the GPUs allow)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--timeout", type=int, default=420, help="seconds per case")
    args = ap.parse_args()
    import torch

    gpus = torch.cuda.device_count()
    if gpus == 0:
        print("gpu_check: no CUDA device visible; nothing to check")
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    todo = {k: v for k, v in cases(gpus).items() if not args.cases or k in args.cases}
    print(f"gpu_check: {gpus} GPU(s) ({torch.cuda.get_device_name(0)}), size {args.size}, cases {list(todo)}")
    rows = []
    for name, overrides in todo.items():
        row = run_case(name, overrides, MEDIUM if args.size == "medium" else [], args.steps, args.timeout)
        rows.append(row)
        print(f"  {name}: {'passed' if row['passed'] else 'FAILED'} in {row['wall_s']:.0f}s", flush=True)
    print(f"\n{'case':<13}{'result':<8}{'step s':>8}{'push s':>8}{'push GB/s':>10}{'peak GPU MiB':>14}")
    for r in rows:
        print(f"{r['case']:<13}{'pass' if r['passed'] else 'FAIL':<8}{r.get('step_s', float('nan')):>8.2f}"
              f"{r.get('push_s', float('nan')):>8.3f}{r.get('push_gb_s', float('nan')):>10.2f}{r['peak_gpu_mib']:>14}")
    (OUT / "results.json").write_text(json.dumps({"gpus": gpus, "size": args.size, "rows": rows}, indent=2))
    print(f"\nlogs and results: {OUT}")
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
