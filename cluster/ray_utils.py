"""Small Ray helpers shared by the actors and the pipelines."""
from __future__ import annotations

import re
import socket
from typing import Iterable

import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError
from ray.util.placement_group import remove_placement_group

# A call that failed because its actor died or is being restarted (not an error in what it was asked).
ACTOR_GONE = (RayActorError, ActorUnavailableError)


def free_port() -> int:
    """A TCP port that was free on this machine a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def free_address() -> tuple[str, int]:
    """This node's IP and a free port on it: a rendezvous address other nodes can reach."""
    return ray.util.get_node_ip_address(), free_port()


def kill_quietly(actors: Iterable) -> None:
    """Kill actors that may already be dead (shutdown paths must not fail on a dead one)."""
    for a in actors:
        try:
            ray.kill(a)
        except Exception:
            pass


def remove_placement_groups_quietly(groups: Iterable) -> None:
    for pg in {id(p): p for p in groups}.values():  # one group may serve several roles (colocated)
        try:
            remove_placement_group(pg)
        except Exception:
            pass


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def describe_failure(error: BaseException, max_lines: int = 6) -> str:
    """The root exception's type and message, and which actor call raised it.

    Ray wraps an actor's exception as ``RayTaskError(ValueError)`` whose first line only
    names the call (``ray::LearnerWorker.train_step() (pid=..., ...)``); the cause is what
    a user needs to see. Nested wrappers (an actor calling another) are unwrapped too."""
    cause, where = error, ""
    while isinstance(cause, RayTaskError):
        first = _ANSI.sub("", str(cause).strip().splitlines()[0]) if str(cause).strip() else ""
        where = where or first.split(" (pid=")[0] + (f" (pid={first.split('pid=')[1].split(',')[0]})"
                                                     if "pid=" in first else "")
        if cause.cause is None or cause.cause is cause:
            break
        cause = cause.cause
    lines = [ln for ln in _ANSI.sub("", str(cause)).strip().splitlines() if ln.strip()]
    text = "\n".join(lines[:max_lines]) + (" ..." if len(lines) > max_lines else "")
    message = f"{type(cause).__name__}: {text}" if text else type(cause).__name__
    if where:
        message += f"\n  raised in {where}; its full traceback is in that worker's log (printed above, and in ray logs)"
    return message


def root_of(error: BaseException | None, kind: type):
    """The exception of type ``kind`` behind ``error`` (through Ray's task wrappers), or None."""
    seen, found = set(), None
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            found = error  # the innermost one: Ray's wrapper also passes for its cause's type
        seen.add(id(error))
        error = getattr(error, "cause", None) or error.__cause__
    return found
