"""Small Ray helpers shared by the actors and the pipelines."""
from __future__ import annotations

import socket
from typing import Iterable

import ray
from ray.util.placement_group import remove_placement_group


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
