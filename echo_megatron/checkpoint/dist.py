"""Save and load training state with megatron ``dist_checkpointing`` (torch_dist format).

Layout: ``ROOT/iter_NNNNNNN/`` (one dist_checkpointing directory), ``ROOT/latest`` (the name of the
newest complete one) and, beside it, Megatron-LM's tracker ``ROOT/latest_checkpointed_iteration.txt`` (its
iteration number), so Megatron-LM's tools find our checkpoints; either marker is read. A checkpoint is written
to ``iter_NNNNNNN.tmp`` and renamed when every rank has finished; the markers are replaced atomically last
(``latest`` after the tracker). A process killed mid-save therefore leaves the previous checkpoint as
``latest``. Model and optimizer are sharded tensors, so a checkpoint saved at one TP/PP/DP layout loads at
another. Scheduler, iteration, consumed samples and the caller's ``state`` are common (rank-0) state; RNG states
are per-rank objects, restored only when the layout is unchanged.

A checkpoint that Megatron-LM wrote (``torch_dist``: the same model keys, no ``common`` entry) loads too: its
model weights are read; its optimizer, scheduler and RNG are not (see docs/checkpoints.md).
"""

from __future__ import annotations

import os
import random
import shutil

import numpy as np
import torch
import torch.distributed as dist

from echo_megatron.faults import maybe_fail

LATEST = "latest"
TRACKER = "latest_checkpointed_iteration.txt"  # Megatron-LM's marker: the iteration number, or "release"


def _layout() -> list[int]:
    from megatron.core import parallel_state as ps

    return [
        ps.get_tensor_model_parallel_world_size(),
        ps.get_pipeline_model_parallel_world_size(),
        ps.get_data_parallel_world_size(),
    ]


def _rank_coords() -> tuple[int, int, int]:
    from megatron.core import parallel_state as ps

    return (
        ps.get_pipeline_model_parallel_rank(),
        ps.get_tensor_model_parallel_rank(),
        ps.get_data_parallel_rank(),
    )


def _unwrap(m):
    """The GPTModel inside megatron's DDP wrapper: checkpoints hold the model's own keys."""
    return m.module if hasattr(m, "module") else m


def _model_sharded(model: list, prefix: str = "model") -> dict:
    if len(model) == 1:
        return {prefix: _unwrap(model[0]).sharded_state_dict()}
    return {f"{prefix}{i}": _unwrap(m).sharded_state_dict() for i, m in enumerate(model)}


def _rng_state() -> dict:
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    return {
        "random": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": get_cuda_rng_tracker().get_states(),
    }


def _set_rng_state(s: dict) -> None:
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    random.setstate(s["random"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if s["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(s["cuda"])
    get_cuda_rng_tracker().set_states(s["tracker"])


def _rng_sharded(data: dict | None):
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    tp, pp, dp = _layout()
    pp_rank, tp_rank, dp_rank = _rank_coords()
    return ShardedObject("rng_state", data, (pp, tp, dp), (pp_rank, tp_rank, dp_rank), replica_id=0)


def _sharded_state(model: list, optimizer, is_loading: bool, with_rng: bool) -> dict:
    sd = _model_sharded(model)
    if optimizer is not None:
        # fully_reshardable: the distributed optimizer's state is saved in the canonical per-parameter
        # form, so it loads at any TP/PP/DP layout (the default flattened format is DP-only in 0.16).
        sd["optimizer"] = optimizer.sharded_state_dict(
            sd, is_loading=is_loading, metadata={"distrib_optim_sharding_type": "dp_reshardable"}
        )
    if with_rng:
        sd["rng"] = _rng_sharded(None if is_loading else _rng_state())
    return sd


def checkpoint_dir(root: str, iteration: int) -> str:
    """``ROOT/iter_NNNNNNN``: where the checkpoint of ``iteration`` lives."""
    return os.path.join(root, f"iter_{iteration:07d}")


def saved_iterations(root: str) -> list[int]:
    """The iterations of the complete checkpoints under ``root`` (``iter_NNNNNNN`` dirs, no ``.tmp``), sorted."""
    if not os.path.isdir(root):
        return []
    names = [d for d in os.listdir(root) if d.startswith("iter_") and d[len("iter_") :].isdigit()]
    return sorted(int(d[len("iter_") :]) for d in names)


def save_checkpoint(
    root: str,
    iteration: int,
    model: list,
    optimizer=None,
    scheduler=None,
    state: dict | None = None,
    keep_last: int = 2,
) -> str:
    """Write ``ROOT/iter_{iteration}`` atomically and point ``ROOT/latest`` at it; returns its path."""
    from megatron.core import dist_checkpointing

    rank = dist.get_rank()
    final = checkpoint_dir(root, iteration)
    tmp = final + ".tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    dist.barrier()
    sd = _sharded_state(model, optimizer, is_loading=False, with_rng=True)
    sd["common"] = {
        "iteration": iteration,
        "layout": _layout(),
        "state": dict(state or {}),
        "has_optimizer": optimizer is not None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
    }
    sd["iteration"] = iteration  # the two top-level entries Megatron-LM's loader reads (docs/checkpoints.md)
    sd["checkpoint_version"] = 3.0
    dist_checkpointing.save(sd, tmp)
    maybe_fail("kill_in_save", iteration)
    dist.barrier()
    if rank == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _write_atomic(os.path.join(root, TRACKER), str(iteration))
        _write_atomic(os.path.join(root, LATEST), os.path.basename(final))
        _prune(root, keep_last)
    dist.barrier()
    return final


def _write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _prune(root: str, keep_last: int) -> None:
    if keep_last <= 0:
        return
    iters = sorted(d for d in os.listdir(root) if d.startswith("iter_") and not d.endswith(".tmp"))
    for d in iters[:-keep_last]:
        shutil.rmtree(os.path.join(root, d), ignore_errors=True)


def latest_checkpoint(root: str) -> str | None:
    """The newest complete checkpoint under ``root`` (via ``latest``, else Megatron-LM's tracker), or None."""
    marker, tracker = os.path.join(root, LATEST), os.path.join(root, TRACKER)
    if os.path.isfile(marker):
        with open(marker) as f:
            name = f.read().strip()
    elif os.path.isfile(tracker):
        with open(tracker) as f:
            text = f.read().strip()
        name = "release" if text == "release" else os.path.basename(checkpoint_dir(root, int(text)))
    else:
        return None
    path = os.path.join(root, name)
    return path if os.path.isdir(path) else None


def find_checkpoint(path: str) -> str:
    """``path`` itself if it is a checkpoint dir, else its ``latest``; a clear error otherwise."""
    if os.path.isfile(os.path.join(path, "metadata.json")):
        return path
    for root in (path, os.path.join(path, "checkpoints")):
        found = latest_checkpoint(root)
        if found:
            return found
    raise FileNotFoundError(
        f"no checkpoint at {path} (expected an iter_NNNNNNN dir, a checkpoints dir with "
        f"'latest' or '{TRACKER}', or a run dir)"
    )


def read_common_state(path: str) -> dict:
    """Our common state of the checkpoint at ``path``; for one Megatron-LM wrote (no ``common`` entry), its
    iteration with no layout (so no RNG is restored) and no optimizer or scheduler state to load."""
    from megatron.core import dist_checkpointing

    state = dist_checkpointing.load_common_state_dict(path)
    if "common" in state:
        return state["common"]
    return {
        "iteration": int(state.get("iteration", 0)),
        "layout": None,
        "state": {},
        "has_optimizer": False,
        "scheduler": None,
        "writer": "megatron-lm",
    }


def _materialize_distributed_optimizer_state(optimizer) -> None:
    """megatron's DistributedOptimizer builds its load template from existing Adam state (and asserts on
    it); a fresh one has none. Megatron-LM's fix: one zero-grad step with dummy states, overwritten in
    place by the load (the model weights are loaded in the same call, after it)."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if isinstance(opt, DistributedOptimizer) and len(opt.optimizer.state) == 0:
            opt._init_optimizer_states_with_dummy_values()


def _restore_adam_steps(optimizer) -> None:
    """megatron 0.16's DistributedOptimizer with the torch-Adam fallback (no Apex/TE) keeps the true step
    count in each param group's ``step`` but leaves the per-parameter ``step`` tensors that torch's AdamW
    uses for bias correction at their pre-load values (and may alias one tensor across parameters,
    which foreach AdamW increments in place). Reset each parameter's own ``step`` from its group."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        for group in getattr(inner, "param_groups", []):
            if "step" not in group:
                continue
            for p in group["params"]:
                st = inner.state.get(p)
                if st is not None and torch.is_tensor(st.get("step")):
                    st["step"] = torch.tensor(float(group["step"]), dtype=st["step"].dtype)


def load_checkpoint(
    path: str,
    model: list,
    optimizer=None,
    scheduler=None,
    load_rng: bool = True,
    load_optimizer_state: bool = True,
) -> dict:
    """Load into ``model`` (and optimizer / scheduler / RNG when given); returns the common state.

    ``optimizer``: the model's optimizer. Its state is loaded when the checkpoint has one and
    ``load_optimizer_state``; otherwise (new weights under a fresh optimizer: an RL policy from its base,
    ``checkpoint.load`` without the optimizer, a weights-only checkpoint) its main parameters are refreshed from
    the loaded weights. That matters in bf16: megatron's mixed-precision optimizer keeps fp32 copies of the
    weights it was built with and writes them back at its first step.
    Keys the checkpoint has but the caller does not ask for are fine; a tensor the caller needs that the
    checkpoint lacks is an error.
    """
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.validation import StrictHandling

    common = read_common_state(path)
    refresh = None
    if optimizer is not None and not (load_optimizer_state and common.get("has_optimizer", True)):
        optimizer, refresh = None, optimizer
    same_layout = common["layout"] == _layout()
    if optimizer is not None:
        _materialize_distributed_optimizer_state(optimizer)
    sd = _sharded_state(model, optimizer, is_loading=True, with_rng=load_rng and same_layout)
    loaded = dist_checkpointing.load(sd, path, strict=StrictHandling.ASSUME_OK_UNEXPECTED)
    if len(model) == 1:
        _unwrap(model[0]).load_state_dict(loaded["model"])
    else:
        for i, m in enumerate(model):
            _unwrap(m).load_state_dict(loaded[f"model{i}"])
    if optimizer is not None:
        with torch.no_grad():  # fp32 runs: the optimizer's main params are views of the model's leaves
            optimizer.load_state_dict(loaded["optimizer"])
        _restore_adam_steps(optimizer)
    if refresh is not None:
        refresh.reload_model_params()
    if scheduler is not None and common.get("scheduler") is not None:
        scheduler.load_state_dict(common["scheduler"])
    if load_rng and same_layout and loaded.get("rng") is not None:
        _set_rng_state(loaded["rng"])
    return common
