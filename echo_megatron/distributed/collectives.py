"""Every collective the package issues outside megatron's own schedules, in one place.

Each function is a no-op (returns its input) when ``torch.distributed`` is not initialised or the group has
one member, so callers need no single-process special case. Groups come from megatron's ``parallel_state``:

    object collectives   gather_to_rank0, broadcast_from_rank0 (global); dp_all_gather (data-parallel group);
                         tp_broadcast (from the tensor-parallel group's first rank); pp_broadcast (from the last
                         pipeline stage)
    tensor collectives   dp_all_reduce_ (sum over data parallel, in place); model_parallel_all_reduce_ (sum over
                         TP x PP); pp_broadcast_tensor_; any_rank (logical OR of a flag over all ranks)
"""

from __future__ import annotations

from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def _ps():
    from megatron.core import parallel_state as ps

    return ps


def gather_to_rank0(items: list) -> list:
    """Concatenate ``items`` of every rank, in rank order, on global rank 0; other ranks get ``[]``."""
    if not initialized() or dist.get_world_size() == 1:
        return list(items)
    parts: list | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(items, parts, dst=0)
    return [x for part in parts for x in part] if parts is not None else []


def broadcast_from_rank0(obj: T) -> T:
    """Global rank 0's ``obj`` on every rank."""
    if not initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def dp_all_gather(items: list) -> list:
    """Concatenate ``items`` of every data-parallel replica, in DP-rank order, on every rank."""
    if not initialized():
        return list(items)
    ps = _ps()
    size = ps.get_data_parallel_world_size()
    if size == 1:
        return list(items)
    out: list = [None] * size
    dist.all_gather_object(out, items, group=ps.get_data_parallel_group())
    return [x for part in out for x in part]


def tp_broadcast(obj: T) -> T:
    """The tensor-parallel group's first rank's ``obj`` on every rank of the group."""
    if not initialized():
        return obj
    ps = _ps()
    if ps.get_tensor_model_parallel_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(
        box, src=ps.get_tensor_model_parallel_src_rank(), group=ps.get_tensor_model_parallel_group()
    )
    return box[0]


def pp_broadcast(obj: T) -> T:
    """The last pipeline stage's ``obj`` on every stage."""
    if not initialized():
        return obj
    ps = _ps()
    if ps.get_pipeline_model_parallel_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(
        box, src=ps.get_pipeline_model_parallel_last_rank(), group=ps.get_pipeline_model_parallel_group()
    )
    return box[0]


def pp_broadcast_tensor_(t: torch.Tensor) -> torch.Tensor:
    """In place: the last pipeline stage's values of ``t`` on every stage."""
    if initialized():
        ps = _ps()
        if ps.get_pipeline_model_parallel_world_size() > 1:
            dist.broadcast(
                t,
                src=ps.get_pipeline_model_parallel_last_rank(),
                group=ps.get_pipeline_model_parallel_group(),
            )
    return t


def dp_all_reduce_(t: torch.Tensor) -> torch.Tensor:
    """In place: the sum of ``t`` over the data-parallel group."""
    if initialized():
        dist.all_reduce(t, group=_ps().get_data_parallel_group())
    return t


def model_parallel_all_reduce_(t: torch.Tensor) -> torch.Tensor:
    """In place: the sum of ``t`` over the model-parallel (TP x PP) group."""
    if initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, group=_ps().get_model_parallel_group())
    return t


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank when ``flag`` is true on any rank."""
    if not initialized():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier() -> None:
    if initialized():
        dist.barrier()


def rank() -> int:
    return dist.get_rank() if initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if initialized() else 1
