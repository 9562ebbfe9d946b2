"""An actor's failure reaches the user as its root exception's type and message, not as
Ray's wrapper line (which names only the call and the pid)."""
from __future__ import annotations

import pytest
from ray.exceptions import ActorDiedError, RayTaskError

from cluster.ray_utils import describe_failure
from pipelines.errors import RunStopped
from pipelines.training.grpo_loop import GRPOTrainer

ROOT = "Image features and image tokens do not match, tokens: 513, features: 512"


def _wrapped(cause: BaseException, call: str = "LearnerWorker.train_step") -> BaseException:
    """What ``ray.get`` raises when an actor method raised ``cause``."""
    try:
        raise cause
    except BaseException as e:  # a real traceback, as Ray captures it
        import traceback

        tb = traceback.format_exc()
        err = RayTaskError(call, tb, e, proctitle=f"ray::{call}", pid=4242, ip="127.0.0.1")
    return err.as_instanceof_cause()


def test_root_cause_of_an_actor_exception():
    err = _wrapped(ValueError(ROOT))
    assert str(err).splitlines()[0].find(ROOT) < 0  # Ray's first line does not say it...
    text = describe_failure(err)
    assert text.startswith(f"ValueError: {ROOT}")  # ...we do, first
    assert "LearnerWorker.train_step" in text and "pid=4242" in text


def test_root_cause_through_nested_actor_calls():
    inner = _wrapped(KeyError("no such tensor: lm_head.weight"), "RolloutWorker.load_weights")
    outer = _wrapped(inner, "LearnerWorker.push")
    assert describe_failure(outer).startswith("KeyError: 'no such tensor: lm_head.weight'")


def test_actor_death_is_described_by_its_own_message():
    text = describe_failure(ActorDiedError())
    assert text.startswith("ActorDiedError: ") and "died" in text


def test_learner_failure_stops_the_run_with_the_root_cause(tmp_path):
    trainer = GRPOTrainer.__new__(GRPOTrainer)  # only the guard's state, no Ray
    trainer.step, trainer.last_checkpoint = 4, str(tmp_path / "checkpoints" / "step_4")

    def fail():
        raise _wrapped(ValueError(ROOT))

    with pytest.raises(RunStopped) as stopped:
        trainer._guard_learner_call("the GRPO update", fail)
    msg = str(stopped.value)
    assert f"ValueError: {ROOT}" in msg and "at step 5" in msg
    assert f"trainer.resume_from={tmp_path / 'checkpoints' / 'step_4'}" in msg
