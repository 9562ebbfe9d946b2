"""Resource plans: what each role asks of the cluster, checked before anything starts.

Rollout, learner and reward workers are sized independently; the plan turns
their counts and per-worker resources into placement-group bundles and
refuses, with what is missing, a plan the cluster cannot hold.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import ray
from ray.util.placement_group import placement_group, remove_placement_group


@dataclass
class RoleSpec:
    role: str
    count: int
    num_cpus: float
    num_gpus: float = 0.0
    custom: dict[str, float] = field(default_factory=dict)

    def bundle(self) -> dict[str, float]:
        b = {"CPU": float(self.num_cpus)}
        if self.num_gpus:
            b["GPU"] = float(self.num_gpus)
        b.update({k: float(v) for k, v in self.custom.items()})
        return b


@dataclass
class ResourcePlan:
    roles: list[RoleSpec]
    strategy: str = "PACK"
    colocate: bool = False

    def totals(self) -> dict[str, float]:
        if self.colocate:
            slots = max(r.count for r in self.roles if r.role in ("rollout", "learner"))
            out = {k: v * slots for k, v in colocated_bundle({r.role: r for r in self.roles}).items()}
            for r in self.roles:
                if r.role not in ("rollout", "learner"):
                    for k, v in r.bundle().items():
                        out[k] = out.get(k, 0.0) + v * r.count
            return out
        out: dict[str, float] = {}
        for r in self.roles:
            for k, v in r.bundle().items():
                out[k] = out.get(k, 0.0) + v * r.count
        return out

    def missing(self, available: dict[str, float]) -> list[str]:
        problems = []
        for k, need in sorted(self.totals().items()):
            have = float(available.get(k, 0.0))
            if need > have + 1e-9:
                who = ", ".join(f"{r.role} {r.count} x {r.bundle().get(k, 0):g}" for r in self.roles if r.bundle().get(k))
                problems.append(f"{k}: the plan needs {need:g} ({who}) but the cluster has {have:g}")
        return problems

    def table(self, available: Optional[dict[str, float]] = None) -> str:
        lines = [f"{'role':<9} {'workers':>7}  per worker", "-" * 48]
        for r in self.roles:
            per = ", ".join(f"{k}={v:g}" for k, v in r.bundle().items())
            lines.append(f"{r.role:<9} {r.count:>7}  {per}")
        lines.append("-" * 48)
        tot = ", ".join(f"{k}={v:g}" for k, v in sorted(self.totals().items()))
        lines.append(f"total{' (colocated)' if self.colocate else ''}: {tot}  placement={self.strategy}")
        if available is not None:
            lines.append("cluster: " + ", ".join(f"{k}={v:g}" for k, v in sorted(available.items())
                                                  if k in ("CPU", "GPU") or not k.startswith(("node:", "memory", "object_store"))))
        return "\n".join(lines)


class InsufficientResources(RuntimeError):
    pass


def node_resources() -> list[dict[str, float]]:
    """Total resources of each alive node of the connected Ray cluster (for ``check_plan(nodes=...)``)."""
    return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]


def unplaceable_bundles(plan: ResourcePlan, nodes: list[dict[str, float]]) -> list[str]:
    """Roles whose single bundle fits on no node (the totals may still fit, spread over nodes)."""
    problems = []
    for r in plan.roles:
        b = r.bundle()
        if r.count and not any(all(float(n.get(k, 0.0)) + 1e-9 >= v for k, v in b.items()) for n in nodes):
            per = ", ".join(f"{k}={v:g}" for k, v in b.items())
            problems.append(f"{r.role}: one worker needs {per} on one node, but no single node has that "
                            f"(nodes: {'; '.join(', '.join(f'{k}={v:g}' for k, v in sorted(n.items()) if k in b) for n in nodes)})")
    return problems


def check_plan(plan: ResourcePlan, available: dict[str, float],
               nodes: Optional[list[dict[str, float]]] = None) -> None:
    """Refuse a plan the cluster cannot hold, naming what is missing.

    ``available`` is the cluster's total (``ray.cluster_resources()``); with ``nodes``
    (``node_resources()``) each worker's bundle must also fit on some single node.
    """
    problems = plan.missing(available)
    if nodes is not None:
        problems += unplaceable_bundles(plan, nodes)
    if problems:
        raise InsufficientResources("the cluster cannot hold this run:\n  - " + "\n  - ".join(problems)
                                    + "\nLower the worker counts or per-worker resources, or add nodes.")


def colocated_bundle(roles: dict) -> dict[str, float]:
    """One colocated slot holds a rollout actor *and* a learner rank, so it reserves what both ask
    for; with GPU fractions summing to at most 1 the two share one device."""
    bundle: dict[str, float] = {}
    for name in ("rollout", "learner"):
        for k, v in roles[name].bundle().items():
            bundle[k] = bundle.get(k, 0.0) + v
    return bundle


def create_placement_groups(plan: ResourcePlan, timeout_s: float = 300.0) -> dict[str, object]:
    """One placement group per role (rollout, learner), or one shared group when colocated.

    Returns {role: placement_group}; reward workers are small and scheduled freely.
    """
    groups: dict[str, object] = {}
    roles = {r.role: r for r in plan.roles}
    if plan.colocate:
        slots = max(roles["rollout"].count, roles["learner"].count)
        bundle = colocated_bundle(roles)
        pg = placement_group([dict(bundle) for _ in range(slots)], strategy=plan.strategy, name="medr1-colocated")
        groups["rollout"] = groups["learner"] = pg
    else:
        for name in ("rollout", "learner"):
            r = roles[name]
            groups[name] = placement_group([r.bundle() for _ in range(r.count)], strategy=plan.strategy,
                                           name=f"medr1-{name}")
    for name, pg in groups.items():
        if not pg.wait(timeout_seconds=timeout_s):
            for other in {id(g): g for g in groups.values()}.values():
                try:
                    remove_placement_group(other)  # do not leave half-reserved resources behind
                except Exception:
                    pass
            raise InsufficientResources(f"placement group for {name} not ready after {timeout_s:.0f}s: "
                                        f"bundles {pg.bundle_specs} cannot be placed")
    return groups
