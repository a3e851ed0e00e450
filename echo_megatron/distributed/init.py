"""Process-group start-up: single process, torchrun, or srun; then megatron's ``parallel_state``.

Rank, world size and the rendezvous address come from (first match wins):
  * torchrun:  RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT
  * srun:      SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; MASTER_ADDR from the environment or the first
               host of SLURM_JOB_NODELIST; MASTER_PORT from the environment or 29500 + SLURM_JOB_ID % 10000
  * otherwise: a single process (rank 0 of 1) on a free local port.
Backend: gloo on CPU, NCCL on GPU (``parallel.backend`` / ``parallel.device`` override).

Across hosts gloo (also megatron's gloo groups next to NCCL) binds to the address its host's name resolves to.
Where a node's /etc/hosts maps its own name to 127.0.1.1 (as Debian/Ubuntu installers and cloud-init write it)
that is the loopback, and the other nodes fail with "Gloo connectFullMesh failed ... remote=[127.0.1.1]".
So a multi-host job without GLOO_SOCKET_IFNAME gets the interface this host uses to reach the others.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
from dataclasses import dataclass
from datetime import timedelta

import psutil
import torch
import torch.distributed as dist
from omegaconf import DictConfig


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # torchrun | srun | single


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slurm_hosts(nodelist: str) -> list[str]:
    """The host names of a Slurm node list (``node[1-2]`` -> node1, node2)."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.split()
        if out:
            return out
    except (OSError, subprocess.SubprocessError):
        pass
    return [nodelist.split(",")[0].split("[")[0]]


def _first_slurm_host(nodelist: str) -> str:
    return _slurm_hosts(nodelist)[0]


def _multi_host(env: dict[str, str]) -> bool:
    """Whether this job's ranks span several hosts (torchrun: more ranks than on this host; srun: nodes)."""
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])) < int(env["WORLD_SIZE"])
    return int(env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_JOB_NUM_NODES") or 1) > 1


def _source_address(host: str) -> str | None:
    """The local address this host sends from to reach ``host`` (a UDP connect sends nothing); None when
    ``host`` does not resolve or is reached over the loopback (it is this host)."""
    try:
        infos = socket.getaddrinfo(host, 9, type=socket.SOCK_DGRAM)
    except OSError:
        return None
    for family, _, _, _, addr in infos:
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect(addr)
                src = s.getsockname()[0]
        except OSError:
            continue
        if not ipaddress.ip_address(src.split("%")[0]).is_loopback:
            return src
    return None


def gloo_interface(environ: dict[str, str] | None = None) -> str | None:
    """The network interface gloo should use, or None to leave gloo's own choice (single host, or
    GLOO_SOCKET_IFNAME already set): the interface holding the address this host uses to reach the rendezvous
    host (MASTER_ADDR) or, where that is this host itself, another node of the Slurm job."""
    env = os.environ if environ is None else environ
    if env.get("GLOO_SOCKET_IFNAME") or not _multi_host(env):
        return None
    me = env.get("SLURMD_NODENAME") or socket.gethostname()
    peers = [env["MASTER_ADDR"]] if env.get("MASTER_ADDR") else []
    if env.get("SLURM_JOB_NODELIST"):
        peers += [h for h in _slurm_hosts(env["SLURM_JOB_NODELIST"]) if h != me]
    for peer in peers:
        src = _source_address(peer)
        if src is None:
            continue
        for name, addrs in psutil.net_if_addrs().items():
            if any(a.address.split("%")[0] == src for a in addrs):
                return name
    return None


def detect_env(environ: dict[str, str] | None = None) -> DistEnv:
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(
            int(env["RANK"]),
            int(env["WORLD_SIZE"]),
            int(env.get("LOCAL_RANK", 0)),
            env.get("MASTER_ADDR", "127.0.0.1"),
            int(env.get("MASTER_PORT", 29500)),
            "torchrun",
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        addr = env.get("MASTER_ADDR") or _first_slurm_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1"))
        port = int(env.get("MASTER_PORT") or 29500 + int(env.get("SLURM_JOB_ID", 0)) % 10000)
        return DistEnv(
            int(env["SLURM_PROCID"]),
            int(env["SLURM_NTASKS"]),
            int(env.get("SLURM_LOCALID", 0)),
            addr,
            port,
            "srun",
        )
    return DistEnv(0, 1, 0, "127.0.0.1", _free_port(), "single")


def resolve_device(cfg: DictConfig) -> torch.device:
    want = cfg.parallel.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("parallel.device=cuda but CUDA is not available on this machine")
    return torch.device(want)


def initialize(cfg: DictConfig) -> tuple[DistEnv, torch.device]:
    """Start torch.distributed and megatron's parallel_state for ``cfg.parallel``; seed the RNGs."""
    from megatron.core import parallel_state as ps

    from echo_megatron.distributed import cpu_shims

    env = detect_env()
    device = resolve_device(cfg)
    tp, pp = cfg.parallel.tp, cfg.parallel.pp
    if env.world_size % (tp * pp):
        raise ValueError(f"world size {env.world_size} is not divisible by tp*pp = {tp}*{pp}")
    if device.type == "cpu":
        cpu_shims.enable_cpu_shims(cfg.model.cpu_gemm)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
    else:
        torch.cuda.set_device(env.local_rank)
    backend = cfg.parallel.backend
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        iface = gloo_interface()
        if iface:
            os.environ["GLOO_SOCKET_IFNAME"] = iface  # read when each gloo group is created
            if env.local_rank == 0:
                print(f"[echo-megatron] gloo over network interface {iface} (GLOO_SOCKET_IFNAME)", flush=True)
        os.environ.setdefault("MASTER_ADDR", env.master_addr)
        os.environ.setdefault("MASTER_PORT", str(env.master_port))
        dist.init_process_group(
            backend=backend,
            rank=env.rank,
            world_size=env.world_size,
            init_method=f"tcp://{env.master_addr}:{env.master_port}",
            timeout=timedelta(minutes=30),
        )
    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(
            tensor_model_parallel_size=tp,
            pipeline_model_parallel_size=pp,
            virtual_pipeline_model_parallel_size=cfg.parallel.vpp,
        )
    seed_everything(cfg.train.seed, device)
    return env, device


def seed_everything(seed: int, device: torch.device) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if device.type == "cuda":
        from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

        model_parallel_cuda_manual_seed(seed)
    else:
        from echo_megatron.distributed.cpu_shims import cpu_model_parallel_seed

        cpu_model_parallel_seed(seed)


def destroy() -> None:
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
