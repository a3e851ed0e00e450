"""Where a run starts from: ``rl.base``, ``checkpoint.load`` and ``eval``'s checkpoint may each name an echo-megatron
run or checkpoint, a Megatron-LM checkpoint directory, or a HuggingFace model (a directory or a hub id).

:func:`resolve_base` turns any of them into a checkpoint directory. A HuggingFace model is imported once, on the
fly, into ``RUN_DIR/base_import`` (``echo-megatron import-hf`` in a child process, so it never meets the caller's
process groups); a later run, or a resumed one, finds the import there. Under torchrun or srun the global rank 0
imports and the other ranks wait for the finished directory (the import renames it into place when complete).

:func:`adopt_base_architecture` gives a run the architecture of the checkpoint it continues from (its
``config.yaml``'s model fields that fix the weights) and checks that the run's tokenizer is the base's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from omegaconf import DictConfig, OmegaConf

from echo_megatron.checkpoint.dist import find_checkpoint
from echo_megatron.checkpoint.hf_import import IMPORT_MARKER, read_import_record, resolve_hf_dir
from echo_megatron.config import ConfigError
from echo_megatron.config.model import ARCHITECTURE_KEYS

IMPORT_DIR = "base_import"
_LAUNCHER_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_LOCALID",
)


def is_hf_model(path: str) -> bool:
    """A transformers model directory (config.json, no checkpoint markers), or a hub id ``org/name`` that is not
    a local path."""
    if os.path.isdir(path):
        markers = (
            "latest",
            "latest_checkpointed_iteration.txt",
            "metadata.json",
            "config.yaml",
            "checkpoints",
        )
        return os.path.isfile(os.path.join(path, "config.json")) and not any(
            os.path.exists(os.path.join(path, m)) for m in markers
        )
    parts = path.split("/")
    return not os.path.exists(path) and len(parts) == 2 and all(parts) and not path.startswith((".", "~"))


def _global_rank() -> int:
    from echo_megatron.distributed.init import detect_env

    return detect_env().rank


def _import_in_child(source: str, out: str, tp: int) -> None:
    """``echo-megatron import-hf SOURCE OUT`` in a fresh process (no launcher variables: one process, its own
    process group); its one-line refusal becomes ours."""
    env = {
        k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS and not k.startswith("TORCHELASTIC")
    }
    cmd = [sys.executable, "-m", "echo_megatron", "import-hf", source, out, f"parallel.tp={tp}"]
    print(f"[echo-megatron] importing {source} into {out}", flush=True)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode == 2:  # a refusal: one line naming the feature
        line = r.stderr.strip().splitlines()[-1].removeprefix("echo-megatron import-hf: config error: ")
        raise ConfigError(f"importing {source}: {line}")
    if r.returncode != 0:
        raise RuntimeError(f"importing {source} failed ({r.returncode}):\n{r.stderr[-4000:]}")


def _wait_for(out: str, source: str, timeout_s: float) -> None:
    """Poll for rank 0's finished import (its marker) or its refusal (``OUT.error``, newer than this wait)."""
    start = time.time()
    deadline = time.monotonic() + timeout_s
    error = out + ".error"
    while not os.path.isfile(os.path.join(out, IMPORT_MARKER)):
        if os.path.isfile(error) and os.path.getmtime(error) > start - 60:
            with open(error, encoding="utf-8") as f:
                raise ConfigError(f.read().strip())
        if time.monotonic() > deadline:
            raise ConfigError(f"importing {source}: rank 0 did not finish {out} within {timeout_s:.0f} s")
        time.sleep(1.0)


def _import_on_rank0(source: str, out: str, tp: int) -> None:
    """Rank 0's import; a refusal is also left in ``OUT.error`` for the ranks waiting on it."""
    error = out + ".error"
    if os.path.exists(error):
        os.remove(error)
    try:
        resolve_hf_dir(source)  # a hub id is fetched (or refused) here, before a child starts
        _import_in_child(source, out, tp)
    except ConfigError as e:
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(error, "w", encoding="utf-8") as f:
            f.write(str(e))
        raise


def resolve_base(path_or_hf: str, run_dir: str, tp: int = 1, timeout_s: float = 3600.0) -> str:
    """The checkpoint directory for ``path_or_hf``: an echo-megatron or Megatron-LM checkpoint as it is; a
    HuggingFace model imported into ``RUN_DIR/base_import`` first (once; ``tp``: the layout it must pad for)."""
    if not is_hf_model(path_or_hf):
        try:
            return find_checkpoint(path_or_hf)
        except FileNotFoundError as e:
            raise ConfigError(f"{e}; nor is it a transformers model directory or hub id") from None
    source = os.path.abspath(path_or_hf) if os.path.isdir(path_or_hf) else path_or_hf
    out = os.path.abspath(os.path.join(run_dir, IMPORT_DIR))
    record = read_import_record(out)
    if record is None:
        if _global_rank() == 0:
            _import_on_rank0(source, out, tp)
        else:
            _wait_for(out, source, timeout_s)
        record = read_import_record(out)
    if record is None or record.source != source:
        raise ConfigError(
            f"{out} holds an import of {record.source if record else 'nothing'}, not {source} "
            f"(remove it or use another run_dir)"
        )
    return find_checkpoint(out)


def base_config(ckpt: str) -> DictConfig | None:
    """The ``config.yaml`` of the run a checkpoint belongs to (RUN_DIR/checkpoints/iter_N), or None
    (a Megatron-LM checkpoint has none)."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(ckpt))), "config.yaml")
    return OmegaConf.load(path) if os.path.isfile(path) else None


def adopt_base_architecture(cfg: DictConfig, ckpt: str) -> DictConfig:
    """``cfg`` with the architecture of the checkpoint's run (``ARCHITECTURE_KEYS``; ``seq_length`` too with
    learned position embeddings) and, when ``cfg`` names no tokenizer, the base's. A tokenizer that differs from
    the base's is an error: its token ids would index the base's embedding rows with other meanings."""
    base = base_config(ckpt)
    if base is None:
        return cfg
    keys = list(ARCHITECTURE_KEYS)
    if base.model.get("position_embedding_type") == "learned_absolute":
        keys.append("seq_length")
    changed = {k: base.model[k] for k in keys if k in base.model and cfg.model.get(k) != base.model[k]}
    tok, base_tok = cfg.data.tokenizer, base.data.tokenizer
    update: dict = {"model": changed}
    if not tok.path and base_tok.path:
        update["data"] = {"tokenizer": base_tok}
    elif tok.path and base_tok.path:
        from echo_megatron.data.tokenizer import load_tokenizer

        if load_tokenizer(tok).hash != load_tokenizer(base_tok).hash:
            raise ConfigError(
                f"data.tokenizer.path={tok.path} is not the tokenizer of {ckpt} ({base_tok.path}); "
                f"tokenize the data with the base's tokenizer"
            )
        changed.pop("vocab_size", None)  # the same tokenizer: the trainer sets it
    if changed and _global_rank() == 0:
        print(
            f"[echo-megatron] architecture from {ckpt}: "
            + ", ".join(f"model.{k}={v}" for k, v in changed.items()),
            flush=True,
        )
    return OmegaConf.merge(cfg, update)
