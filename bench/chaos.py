"""Chaos runs: the smoke config trained N times while rollout actors, reward actors and (in some
runs) the learner rank are SIGKILLed at random moments of a step; then the per-prompt ledger
(``pipelines/audit/ledger.py``) of each run must show every scheduled prompt trained exactly once,
in the scheduled order.

    .venv/bin/python bench/chaos.py --runs 10 --learner-runs 2 [--steps 8] [--kills 3] [--seed 0]
        [--out outputs/chaos] [--config smoke.yaml] [key=value ...]

Each run is ``medr1 train`` in a subprocess. A kill is planned as (role, phase, step): the script
watches ``OUT/phase.json`` (the driver rewrites it at each phase: sampling, scoring, learning,
pushing, saving, evaluating), waits for that phase at that step or later, waits a random fraction
of a typical phase length, then SIGKILLs one actor process of that role among the run's own
processes (Ray names them ``ray::RolloutWorker``, ``ray::RewardWorker``, ``ray::LearnerWorker``).
Rollout and reward actors are restarted by Ray and the run goes on; a learner kill stops the run
naming its last checkpoint, and the script reruns the same command, which continues from it
(``trainer.resume_from=auto``, the default). The phase recorded for a kill is the marker read just
after the signal was sent. A table per run and ``OUT/chaos.json`` come out at the end; the exit
status is 0 only if every run finished with a clean ledger and a verified trace store.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ROLES = {"rollout": "ray::RolloutWorker", "reward": "ray::RewardWorker", "learner": "ray::LearnerWorker"}
# Where a kill may land, per role: the phases in which that role is busy, or about to be needed.
PHASES = {"rollout": ("sampling", "pushing", "learning", "evaluating"),
          "reward": ("scoring", "sampling", "learning"),
          "learner": ("learning", "pushing", "sampling", "saving")}
# How long after a phase starts a kill may wait: about half the phase's length in the smoke run
# (scoring lasts milliseconds, so a kill planned for it goes at once).
DELAY_S = {"sampling": 0.15, "scoring": 0.0, "learning": 0.5, "pushing": 0.06, "saving": 0.2, "evaluating": 0.8}
MAX_ATTEMPTS = 3  # a run is started at most this many times (the first, and reruns after learner kills)
HUNG = -999  # the exit status recorded for an attempt stopped at its time limit


@dataclass
class Kill:
    role: str
    phase: str  # the phase it was planned for
    step: int  # at this step or later
    delay_s: float  # after the phase was seen
    pid: int = 0
    at_phase: str = ""  # the marker just after the signal: where it really landed
    at_step: int = -1
    attempt: int = 0
    done: bool = False


@dataclass
class RunResult:
    run: int
    out: str
    kills: list[Kill] = field(default_factory=list)
    attempts: list[int] = field(default_factory=list)  # exit status of each start
    finished: bool = False
    minutes: float = 0.0
    ledger: dict = field(default_factory=dict)
    traces_ok: bool = False
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.finished and self.traces_ok and bool(self.ledger.get("ok"))


def plan_kills(rng: random.Random, steps: int, n: int, learner: bool, save_every: int,
               learner_phase: str | None = None) -> list[Kill]:
    """``n`` kills (one of them the learner's when ``learner``), each role at least once, in step order.
    The learner is killed after the first checkpoint (or while saving a later one), so its run has
    something to continue from."""
    roles = ["rollout", "reward"] + (["learner"] if learner else [])
    roles += [rng.choice(["rollout", "reward"]) for _ in range(max(0, n - len(roles)))]
    kills = []
    for role in roles:
        phase = learner_phase if role == "learner" and learner_phase else rng.choice(PHASES[role])
        lo = save_every if role == "learner" else 0
        step = rng.randrange(lo, max(lo + 1, steps - 1))
        if phase == "saving":  # the marker's step is the steps done; a later save than the first (final: steps)
            step = rng.randrange(2 * save_every, steps + 1, save_every) if steps >= 2 * save_every else steps
        kills.append(Kill(role, phase, step, delay_s=round(rng.uniform(0.0, DELAY_S[phase]), 3)))
    return sorted(kills, key=lambda k: (k.step, k.role == "learner"))


def descendants(root: int) -> dict[int, str]:
    """pid -> command line of every process below ``root`` (Ray's actors are the driver's descendants)."""
    children: dict[int, list[int]] = {}
    cmd: dict[int, str] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            cmd[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = {}, [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out[c] = cmd.get(c, "")
            todo.append(c)
    return out


def victims(root: int, role: str) -> list[int]:
    title = ROLES[role]
    return sorted(p for p, c in descendants(root).items() if c == title or c.startswith(title + "."))


def read_phase(out: Path) -> dict | None:
    try:
        return json.loads((out / "phase.json").read_text())
    except (OSError, ValueError):
        return None


def run_once(cmd: list[str], out: Path, kills: list[Kill], attempt: int, rng: random.Random, log,
             timeout_s: float) -> int:
    """Start the run; deliver the pending kills in order as their phases come; return its exit status."""
    (out / "phase.json").unlink(missing_ok=True)  # a rerun's marker only
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
    pending = [k for k in kills if not k.done]
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None:
        if time.monotonic() > deadline:  # a hang is a finding: stop the run and every process it started
            print(f"    attempt {attempt} still running after {timeout_s:.0f}s: killing it", flush=True)
            for pid in [proc.pid, *descendants(proc.pid)]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait()
            return HUNG
        if not pending:
            time.sleep(0.5)
            continue
        m = read_phase(out)
        k = next((k for k in pending if m and m["phase"] == k.phase and m["step"] >= k.step), None)
        if k is not None:  # any pending kill whose moment has come (one waiting for a later phase blocks none)
            time.sleep(k.delay_s)
            pids = victims(proc.pid, k.role)
            if pids:
                k.pid = rng.choice(pids)
                try:
                    os.kill(k.pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue  # gone in between (e.g. being restarted): try again at the next sighting
                after = read_phase(out) or {}
                k.at_phase, k.at_step, k.attempt, k.done = after.get("phase", "?"), after.get("step", -1), attempt, True
                print(f"    killed {k.role} pid {k.pid} in {k.at_phase} at step {k.at_step} "
                      f"(planned: {k.phase}, step >= {k.step})", flush=True)
                pending.remove(k)
                continue
        time.sleep(0.005)  # phases can be short: look often
    return proc.returncode


def ledger_of(config: str, overrides: list[str]) -> dict:
    from pipelines.audit.ledger import run_ledger
    from pipelines.config import load_config

    return run_ledger(load_config(config, overrides)).to_dict()


def traces_verified(out: Path) -> bool:
    from pipelines.tracing.verify import verify_store

    v = verify_store(out / "traces")
    for p in v.problems[:3]:
        print(f"    trace store: {p}")
    return v.ok


def chaos_run(i: int, args, shared: Path) -> RunResult:
    rng = random.Random(args.seed * 1000 + i)
    out = Path(args.out) / f"run_{i:02d}"
    learner = i < args.learner_runs
    # The learner runs take its phases in turn (learning, pushing, sampling, saving): each gets its kill.
    kills = plan_kills(rng, args.steps, args.kills, learner, args.save_every, PHASES["learner"][i % 4])
    overrides = [f"model.path={shared / 'model'}", f"data.prepared_dir={shared / 'data'}",
                 f"sft.warmstart_dir={shared / 'warm'}", f"trainer.output_dir={out}",
                 f"trainer.total_steps={args.steps}", f"trainer.save_every={args.save_every}",
                 "logging.progress=false", "logging.tensorboard=false", *args.overrides]
    cmd = [sys.executable, "-m", "pipelines.cli", "train", args.config, *overrides]
    res = RunResult(i, str(out), kills)
    out.mkdir(parents=True, exist_ok=True)
    print(f"run {i}: kills planned: " + ", ".join(f"{k.role}@{k.phase}/step>={k.step}" for k in kills), flush=True)
    t0 = time.monotonic()
    with open(out / "chaos.log", "a") as log:
        for attempt in range(MAX_ATTEMPTS):
            rc = run_once(cmd, out, kills, attempt, rng, log, args.attempt_timeout)
            res.attempts.append(rc)
            print(f"  attempt {attempt}: exit {rc}", flush=True)
            if rc == 0:
                res.finished = True
                break
            if rc == HUNG:
                res.error = f"attempt {attempt} hung"
                break
    res.minutes = (time.monotonic() - t0) / 60
    try:
        res.ledger = ledger_of(args.config, overrides)
        res.traces_ok = traces_verified(out)
    except Exception as e:  # reported in the table, the other runs go on
        res.error = f"{type(e).__name__}: {e}"
    return res


def table(results: list[RunResult]) -> str:
    head = (f"{'run':>3}  {'kills (role@phase)':<58} {'resumed':>7} {'sched':>5} {'trained':>7} {'dup':>3} "
            f"{'miss':>4} {'order':>5} {'aband':>5} {'traces':>6} {'min':>5}  result")
    lines = [head, "-" * len(head)]
    for r in results:
        lg = r.ledger
        kills = " ".join(f"{k.role}@{k.at_phase or 'missed'}" for k in r.kills)
        lines.append(f"{r.run:>3}  {kills:<58} {len(r.attempts) - 1:>7} {lg.get('scheduled', '-'):>5} "
                     f"{lg.get('trained', '-'):>7} {lg.get('duplicated', '-'):>3} {lg.get('missing', '-'):>4} "
                     f"{('ok' if lg.get('order_ok') else 'NO') if lg else '-':>5} {lg.get('abandoned', '-'):>5} "
                     f"{'ok' if r.traces_ok else 'NO':>6} {r.minutes:>5.1f}  "
                     f"{'ok' if r.ok else 'FAILED ' + (r.error or ('not finished' if not r.finished else 'ledger'))}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--first", type=int, default=0, help="index of the first run (to run a long series in parts)")
    ap.add_argument("--learner-runs", type=int, default=2, help="runs 0..K-1 also kill the learner rank")
    ap.add_argument("--kills", type=int, default=3, help="kills per run")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--save-every", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--attempt-timeout", type=float, default=900.0, help="seconds before a start counts as hung")
    ap.add_argument("--config", default="smoke.yaml")
    ap.add_argument("--out", default="outputs/chaos")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = ap.parse_args(argv)
    shared = Path(args.out) / "shared"  # model, data and warm-start, built by the first run, reused
    results = []
    for i in range(args.first, args.first + args.runs):
        results.append(chaos_run(i, args, shared))
        print(table(results[-1:]).splitlines()[-1], flush=True)
    report = table(results)
    print("\n" + report)
    path = Path(args.out) / f"chaos_{args.first:02d}-{args.first + args.runs - 1:02d}.json"
    path.write_text(json.dumps([{**asdict(r), "ok": r.ok} for r in results], indent=1, default=str))
    print(f"\n{sum(r.ok for r in results)}/{len(results)} runs clean; details in {path}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
