"""The short chaos run (CI): the smoke config for 3 steps with a rollout actor, a reward actor and the
learner rank SIGKILLed at random moments of a step (bench/chaos.py). The learner kill stops the run naming
its last checkpoint; the rerun of the same command continues from it (trainer.resume_from=auto). The
per-prompt ledger must then show each scheduled prompt trained exactly once, in order, and the trace store
must verify. The full series (10 runs) is `bench/chaos.py --runs 10` (README, "Failures")."""
from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_kills_across_roles_lose_and_repeat_no_prompt(tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    import chaos

    rc = chaos.main(["--runs", "1", "--learner-runs", "1", "--kills", "3", "--steps", "3", "--save-every", "1",
                     "--seed", "1", "--attempt-timeout", "420", "--out", str(tmp_path),
                     "sft.warmstart_dir=", "eval.max_samples=2"])
    [run] = json.loads((tmp_path / "chaos_00-00.json").read_text())
    kills = run["kills"]
    assert sorted(k["role"] for k in kills) == ["learner", "reward", "rollout"]
    assert all(k["done"] and k["at_phase"] for k in kills), kills  # each kill was delivered during the run
    assert run["attempts"][0] != 0 and run["attempts"][-1] == 0 and len(run["attempts"]) == 2, run["attempts"]
    log = (tmp_path / "run_00" / "chaos.log").read_text()
    # The learner's death stops the first attempt naming where to continue; the rerun continues from it.
    assert "the learner failed during" in log and "the last good checkpoint is" in log, log[-3000:]
    assert "resume_from=auto: continuing from" in log
    lg = run["ledger"]
    assert lg["resumes"] == 1 and lg["end_step"] == 3
    assert (lg["scheduled"], lg["trained"], lg["duplicated"], lg["missing"], lg["order_ok"]) == (12, 12, 0, 0, True)
    assert run["traces_ok"] and run["ok"] and rc == 0
