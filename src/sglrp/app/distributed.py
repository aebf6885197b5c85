"""Scale-out of the evaluation runner with ``torch.distributed``.

Under ``torchrun --nproc_per_node=K sglrp evaluate ...`` every process sees ``RANK``,
``WORLD_SIZE`` (and ``LOCAL_RANK``) in its environment. :func:`setup` then joins the process
group (``nccl`` when CUDA is available, ``gloo`` on CPU), each rank evaluates the batches
:func:`shard` gives it, and :func:`gather_to_root` collects the per-batch records on rank 0,
which merges them and writes the results. Without those variables everything runs in one
process and the helpers are no-ops.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "barrier",
    "broadcast_from_root",
    "detect",
    "gather_to_root",
    "setup",
    "shard",
]

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    Attributes
    ----------
    rank, world_size, local_rank
        From ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (0, 1, 0 without them).
    backend
        ``"nccl"``, ``"gloo"`` or ``None`` (single process).
    device
        Device this rank computes on.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    @property
    def is_root(self) -> bool:
        """True on rank 0, the process that merges and writes the results."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def detect(device: str = "auto") -> DistInfo:
    """Read ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` and choose backend and device.

    Parameters
    ----------
    device
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda"``.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda'")
    rank, world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    local = _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"invalid RANK={rank} / WORLD_SIZE={world}; start the job with torchrun")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available; use --device cpu")
    dev = torch.device(f"cuda:{local % torch.cuda.device_count()}") if use_cuda else None
    dev = dev or torch.device("cpu")
    backend = None if world == 1 else ("nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, local, backend, dev)


@contextmanager
def setup(device: str = "auto") -> Iterator[DistInfo]:
    """Join the process group for the duration of the block (no-op for one process).

    An already initialised group (a caller that set it up itself) is used and left alone.
    """
    info = detect(device)
    created = False
    if info.distributed and not dist.is_initialized():
        if info.device.type == "cuda":
            torch.cuda.set_device(info.device)
        dist.init_process_group(backend=info.backend, init_method="env://")
        created = True
    try:
        yield info
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def shard(items: Sequence[T], info: DistInfo) -> list[T]:
    """Round-robin share of ``items`` for this rank: ``items[rank::world_size]``.

    Sharding whole batches (rather than images) keeps every batch identical to the batch a
    single process would form, so the merged result equals the single-process result.
    """
    return list(items[info.rank :: info.world_size])


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op for one process)."""
    if info.distributed and dist.is_initialized():
        dist.barrier()


def gather_to_root(obj: Any, info: DistInfo) -> list[Any] | None:
    """Collect one picklable object per rank on rank 0.

    Returns the list ordered by rank on rank 0 and ``None`` elsewhere; with one process,
    ``[obj]``.
    """
    if not info.distributed:
        return [obj]
    out: list[Any] | None = [None] * info.world_size if info.is_root else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_root(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself with one process)."""
    if not info.distributed:
        return obj
    box = [obj if info.is_root else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
