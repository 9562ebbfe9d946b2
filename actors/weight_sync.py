"""The driver's side of a weight push: learner weights into every vLLM engine.

Every backend goes through vLLM's weight-transfer API (``init_weight_transfer_engine``,
``start_weight_update``, ``update_weights``, ``finish_weight_update`` with the weight
version); the engines are in ``actors/transfer_engines.py`` (ours) and vLLM:

- ``object_store``: rank 0's state dict is put in Ray's object store once; each
  rollout actor reads it (zero-copy on one node) and feeds its engine messages of at
  most ``bucket_size_mb`` (``medr1_stream``). Works with ZeRO-3 and on any hardware.
- ``gloo`` / ``nccl``: learner rank 0's trainer engine broadcasts packed buffers to
  every engine's workers (``medr1_gloo`` on CPUs, vLLM's ``nccl`` on GPUs).
- ``ipc``: colocated GPUs; each learner rank shares CUDA memory handles with the
  engine on its device (vLLM's ``ipc``).
- ``shm``: one node; learner rank 0 writes the weights into a ``/dev/shm`` segment
  every engine has mapped and the engines load views of it, bucket by bucket
  (``medr1_shm``, ``actors/transfer_shm.py``): no pickling, one copy on each side.

After a push the engines' weights can be checked against the learner's
(``weight_sync.verify``); a mismatch stops the run naming the tensors. A restarted
rollout actor rejoins: the broadcast group is re-formed (fresh port, old groups shut
down) and it is verified again. A rollout actor that dies during a push is left out of
it on every backend: the push goes on to the others (a broadcast group is re-formed
without it) and the actor is caught up once Ray has restarted it. Every wait has
``weight_sync.timeout_s``.
"""
from __future__ import annotations

import logging
import time

import ray

from actors.weight_stream import DEFAULT_CHUNK_BYTES
from actors.weight_verify import engine_stats, expected_stats, mismatches
from cluster.ray_utils import ACTOR_GONE, describe_failure, root_of

log = logging.getLogger(__name__)

class WeightPushError(RuntimeError):
    """A push that did not complete, or did not land (verification)."""


class RolloutLostError(WeightPushError):
    """A rollout actor died (or is restarting) during a push; ``rollout`` is its slot in the push's group."""

    def __init__(self, message: str, rollout: int):
        super().__init__(message)
        self.rollout = int(rollout)

    def __reduce__(self):  # raised in a learner actor, caught on the driver: keep the slot
        return type(self), (str(self), self.rollout)


class NotInWeightGroupError(RuntimeError):
    """Raised by a rollout actor asked to take a push through a weight group it never joined: Ray
    restarted it since the group was formed (killed between pushes, unnoticed until now)."""


def lost_rollout(error: BaseException) -> RolloutLostError | None:
    return root_of(error, RolloutLostError)


class WeightSync:
    """What every backend shares: timeouts, verification, and rejoining actors."""

    backend = ""

    def __init__(self, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES, timeout_s: float = 600.0, verify: str = "first",
                 dtype: str | None = None, tp_size: int = 1):
        self.chunk_bytes = int(chunk_bytes)
        self.timeout_s = float(timeout_s)
        self.verify_when = str(verify)
        self.dtype = dtype
        self.tp_size = int(tp_size)
        self._verify_next = self.verify_when != "off"
        self._record = True  # whether the push under way will be verified (engines may skip their stats)
        self._names: dict | None = None

    def _get(self, refs, what: str, timeout: float | None = None):
        timeout = timeout or self.timeout_s
        try:
            return ray.get(refs, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise WeightPushError(f"weight push ({self.backend}): {what} not done after {timeout:.0f}s "
                                  "(weight_sync.timeout_s)") from None

    def push(self, learners, workers: list, version: int) -> dict:
        t0 = time.perf_counter()
        self._record = verify = self._verify_next or self.verify_when == "every"
        out = self._push(learners, workers, version)
        seconds = time.perf_counter() - t0
        nbytes = out.get("push_bytes", 0)
        out.update(push_seconds=seconds, push_bytes_per_s=nbytes / seconds if seconds > 0 else 0.0,
                   weight_version=version)
        live = [w for i, w in enumerate(workers) if i not in out.get("failed_workers", [])]
        if verify and live:  # the ones that failed are verified when they rejoin
            t1 = time.perf_counter()
            self.verify(learners, live, version)
            out.update(weight_verified=1.0, verify_seconds=time.perf_counter() - t1)
            self._verify_next = False
        return out

    def rejoin(self, learners, workers: list, worker, version: int) -> None:
        """``worker`` came back from a restart with the base weights: bring it to ``version``."""
        self._verify_next = self._record = self.verify_when != "off"
        self._rejoin(learners, workers, worker, version)
        if self._verify_next:
            self.verify(learners, [worker], version)
            self._verify_next = False

    def verify(self, learners, workers: list, version: int) -> None:
        """Raise ``WeightPushError`` naming the tensors that differ, unless every engine matches the learner."""
        learner = learners.call_rank0("weight_stats", self.dtype)
        if self._names is None:
            self._names = self._get(workers[0].param_names.remote(sorted(learner)), "naming the engine's parameters")
        expected, sources, unmapped = expected_stats(learner, self._names)
        per_engine = self._get([w.weight_stats.remote() for w in workers], "reading the engines' weights")
        for w, stats in zip(workers, per_engine):
            bad = [f"{ck}: no parameter of the engine loads it" for ck in unmapped]
            bad += mismatches(expected, engine_stats(stats, expected, sources), sources)
            bad += [f"{m}: its CPU kernel multiplies by other weights than the parameter holds (a stale packed copy)"
                    for m in sorted({m for s in stats for m in s.get("stale_kernels", [])})]
            if bad:
                name = ray.get(w.ready.remote(), timeout=self.timeout_s)["index"]
                raise WeightPushError(
                    f"after the push of weight version {version} ({self.backend}), rollout-{name}'s weights differ "
                    f"from the learner's in {len(bad)} tensor(s):\n    " + "\n    ".join(bad[:8])
                    + ("\n    ..." if len(bad) > 8 else ""))

    def _push(self, learners, workers: list, version: int) -> dict:
        raise NotImplementedError

    def _rejoin(self, learners, workers: list, worker, version: int) -> None:
        raise NotImplementedError


class ObjectStoreWeightSync(WeightSync):
    backend = "object_store"

    def _push(self, learners, workers: list, version: int) -> dict:
        t0 = time.perf_counter()
        ref = learners.gather_state_dict(as_ref=True)  # all ranks take part (ZeRO-3 gathers)
        gather = time.perf_counter() - t0
        refs = [w.load_weights.remote(ref, version, self.chunk_bytes) for w in workers]
        stats, failed = [], []
        for i, r in enumerate(refs):
            try:
                stats.append(self._get(r, f"rollout-{i} loading"))
            except ACTOR_GONE:
                failed.append(i)  # a dying rollout actor: Ray restarts it and the pool catches it up
        return {"push_gather_seconds": gather, "push_bytes": stats[0]["bytes"] if stats else 0,
                "failed_workers": failed}

    def _rejoin(self, learners, workers: list, worker, version: int) -> None:
        self._get(worker.load_weights.remote(learners.gather_state_dict(as_ref=True), version, self.chunk_bytes),
                  "catching up a restarted rollout actor")


class BroadcastWeightSync(WeightSync):
    """gloo, nccl, ipc and shm: the learner ranks' trainer engines drive the engines (actors/transfer_client.py)."""

    def __init__(self, backend: str, **kwargs):
        super().__init__(**kwargs)
        self.backend = backend
        self._group: list | None = None  # the actors the current transfer group was formed with
        self._formed = False  # whether that group is usable (a failed collective leaves it not)

    def _form(self, learners, workers: list, lost: tuple = ()) -> None:
        if self._group is not None:
            # Old groups are shut down on both sides first (an engine with an update left open by a failed
            # push closes it); a restarted actor has none, which is fine; a lost one is not waited for.
            learners.call_all("shutdown_weight_transfer")
            for w in self._group:
                if any(w is x for x in lost):
                    continue
                try:
                    ray.get(w.shutdown_weight_transfer_engine.remote(), timeout=self.timeout_s)
                except Exception as e:  # noqa: BLE001  (a restarted or dying actor: nothing to release)
                    log.debug("releasing a weight group: %s", describe_failure(e))
        self._group, self._formed = list(workers), False  # shut down next time even if forming fails
        address = learners.call_rank0("free_address") if self.backend in ("gloo", "nccl") else None
        refs = [w.init_weight_transfer.remote(self.backend, list(workers), address, tp_size=self.tp_size,
                                              dtype=self.dtype, chunk_bytes=self.chunk_bytes, timeout_s=self.timeout_s)
                for w in learners.workers]
        self._run(refs, "forming the weight group")
        self._formed = True

    def _run(self, refs, what: str):
        try:
            # Longer than the learner's own waits, which name the engine that failed.
            return self._get(refs, what, 2 * self.timeout_s + 30)
        except ray.exceptions.RayTaskError as e:
            self._formed = False  # a failed collective leaves the group unusable: re-form before the next push
            lost = lost_rollout(e)
            if lost is not None:
                raise lost from e
            raise WeightPushError(f"weight push ({self.backend}) failed while {what}: {describe_failure(e)}") from e

    def _push(self, learners, workers: list, version: int) -> dict:
        """Push to every actor; one that dies meanwhile is dropped, the group re-formed without it and the
        push run again for the others (its index is returned in ``failed_workers``: caught up later)."""
        lost: list[int] = []
        while True:
            live = [w for i, w in enumerate(workers) if i not in lost]
            if not live:
                return {"push_bytes": 0, "push_send_seconds": 0.0, "failed_workers": lost}
            try:
                if not self._formed or len(self._group) != len(live) or \
                        any(a is not b for a, b in zip(self._group, live)):
                    self._form(learners, live, tuple(w for i, w in enumerate(workers) if i in lost))
                sent = self._run([w.push_weights.remote(version, self._record) for w in learners.workers],
                                 f"pushing version {version}")
                break
            except RolloutLostError as e:
                gone = next(i for i, w in enumerate(workers) if w is live[e.rollout])
                lost.append(gone)
                log.warning("rollout-%d was lost during the weight push (%s); pushing to the other %d without it",
                            gone, e, len(live) - 1)
        parts = {f"push_sender_{k}_seconds": v for k, v in sent[0].get("parts", {}).items()}
        if "in_place" in sent[0]:  # shm: tensors every engine reads from the segment itself (not loaded)
            parts["push_in_place_tensors"] = sent[0]["in_place"]
        return {"push_bytes": sent[0]["bytes"], "push_send_seconds": sent[0]["seconds"], "failed_workers": lost,
                **parts}

    def _rejoin(self, learners, workers: list, worker, version: int) -> None:
        self._formed = False  # every engine re-forms the group with the restarted one
        failed = self._push(learners, workers, version)["failed_workers"]
        if any(workers[i] is worker for i in failed):
            raise WeightPushError(f"weight push ({self.backend}): a restarted rollout actor failed again while "
                                  "catching up")


def make_weight_sync(backend: str, *, bucket_size_mb: int = 256, timeout_s: float = 600.0, verify: str = "first",
                     dtype: str | None = None, tp_size: int = 1) -> WeightSync:
    kwargs = dict(chunk_bytes=int(bucket_size_mb) << 20, timeout_s=timeout_s, verify=verify, dtype=dtype,
                  tp_size=tp_size)
    if backend == "object_store":
        return ObjectStoreWeightSync(**kwargs)
    if backend in ("gloo", "nccl", "ipc", "shm"):
        return BroadcastWeightSync(backend, **kwargs)
    raise ValueError(f"unknown weight_sync.backend '{backend}'; choose object_store, shm, gloo, nccl or ipc")
