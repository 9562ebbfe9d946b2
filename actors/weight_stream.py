"""Weights as a stream of bounded messages, and the receiver that rebuilds them.

The object-store push hands every vLLM engine the full state dict. Inside the
engine it travels through ``collective_rpc``; with the engine in its own process
(the GPU default) that is msgspec, which cannot encode one ``bytes`` of 4 GiB or
more, and a 2B model in bf16 is 4.4 GB. So the weights go as a stream: the
tensors' raw bytes one after another, cut into messages of at most ``chunk_bytes``
(a large tensor spans several messages). The first message of a push carries the
names, dtypes and shapes; the receiver fills one tensor at a time and hands each
finished one to the model. No message grows with the model.

Pure torch: tested in milliseconds, used by ``actors/transfer_engines.py``.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

DEFAULT_CHUNK_BYTES = 256 << 20


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # torch dtype name without the "torch." prefix
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= int(d)
        return n * getattr(torch, self.dtype).itemsize


def spec_of(name: str, t: torch.Tensor) -> TensorSpec:
    return TensorSpec(name, str(t.dtype).removeprefix("torch."), tuple(int(d) for d in t.shape))


def message_plan(specs: list[TensorSpec], chunk_bytes: int) -> list[list[tuple[int, int, int]]]:
    """Which bytes go in which message: per message a list of (tensor index, start, end).

    Computed from the specs alone, so it can be checked for any model built on the
    meta device. Every message holds at most ``chunk_bytes`` bytes of tensor data."""
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be positive (got {chunk_bytes})")
    plan: list[list[tuple[int, int, int]]] = []
    current: list[tuple[int, int, int]] = []
    room = chunk_bytes
    for i, spec in enumerate(specs):
        start, size = 0, spec.nbytes
        while start < size:
            take = min(room, size - start)
            current.append((i, start, start + take))
            start += take
            room -= take
            if room == 0:
                plan.append(current)
                current, room = [], chunk_bytes
        if size == 0:
            current.append((i, 0, 0))
    if current:
        plan.append(current)
    return plan


def _as_bytes(t: torch.Tensor) -> memoryview:
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


def stream_messages(named: Iterable[tuple[str, torch.Tensor]], chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                    ) -> Iterator[dict]:
    """The messages of one push. Message 0 also carries ``specs``; each carries
    ``pieces``: (tensor index, start, bytes)."""
    tensors = [(n, t) for n, t in named]
    specs = [spec_of(n, t) for n, t in tensors]
    views: dict[int, memoryview] = {}
    for k, message in enumerate(message_plan(specs, chunk_bytes)):
        pieces = []
        for i, a, b in message:
            if i not in views:
                views.clear()  # one tensor's bytes alive at a time (plus the one being finished)
                views[i] = _as_bytes(tensors[i][1])
            pieces.append((i, a, bytes(views[i][a:b])))
        out = {"pieces": pieces}
        if k == 0:
            out["specs"] = [(s.name, s.dtype, list(s.shape)) for s in specs]
        yield out


class StreamAssembler:
    """Receiving half: feed it the messages in order; it returns each tensor once complete."""

    def __init__(self):
        self.specs: list[TensorSpec] | None = None
        self._buf: torch.Tensor | None = None
        self._index = -1
        self._filled = 0
        self.received = 0

    def feed(self, message: dict) -> list[tuple[str, torch.Tensor]]:
        if "specs" in message:
            self.specs = [TensorSpec(n, d, tuple(s)) for n, d, s in message["specs"]]
            self._buf, self._index, self._filled, self.received = None, -1, 0, 0
        if self.specs is None:
            raise ValueError("weight stream: a message arrived before the one carrying the tensor specs")
        done = []
        for i, start, data in message["pieces"]:
            spec = self.specs[i]
            if i != self._index:
                if self._buf is not None:
                    raise ValueError(f"weight stream: {self.specs[self._index].name} incomplete when "
                                     f"{spec.name} began ({self._filled} of {self._buf.numel()} bytes)")
                self._buf, self._index, self._filled = torch.empty(spec.nbytes, dtype=torch.uint8), i, 0
            if start != self._filled:
                raise ValueError(f"weight stream: {spec.name} bytes out of order (got {start}, expected "
                                 f"{self._filled})")
            if data:
                self._buf[start:start + len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            self._filled += len(data)
            if self._filled == spec.nbytes:
                done.append((spec.name, self._buf.view(getattr(torch, spec.dtype)).reshape(spec.shape)))
                self._buf, self._index, self._filled = None, -1, 0
                self.received += 1
        return done

    def finish(self) -> int:
        """Check that every announced tensor arrived; returns how many."""
        expected = len(self.specs or [])
        if self._buf is not None or self.received != expected:
            raise ValueError(f"weight stream ended after {self.received} of {expected} tensors")
        self.specs = None
        return expected
