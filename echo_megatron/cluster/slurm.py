"""The few Slurm client calls the project makes: sbatch, scontrol show job, scontrol show hostnames."""

from __future__ import annotations

import shutil
import subprocess


class SlurmError(RuntimeError):
    """A Slurm command failed or is missing; the message says which and why."""


def _run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    if shutil.which(cmd[0]) is None:
        raise SlurmError(f"'{cmd[0]}' not found: is this a Slurm login node (or is SLURM_CONF set)?")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def sbatch(script: str, dependency: str | None = None) -> str:
    """Submit ``script``; returns the job id. A dependency that can never be met cancels the job."""
    cmd = ["sbatch", "--parsable"]
    if dependency:
        cmd += [f"--dependency={dependency}", "--kill-on-invalid-dep=yes"]
    out = _run(cmd + [script])
    if out.returncode != 0:
        raise SlurmError(f"{' '.join(cmd + [script])} failed ({out.returncode}): {out.stderr.strip()}")
    return out.stdout.strip().split(";")[0]  # "id" or "id;cluster"


def parse_show_job(text: str) -> list[dict[str, str]]:
    """``scontrol show job -o`` output: one ``Key=Value ...`` line per job (or array task)."""
    jobs = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields: dict[str, str] = {}
        for token in line.split():
            key, sep, value = token.partition("=")
            if sep:
                fields[key] = value
            elif fields:  # a value with spaces (e.g. Command=...): glue it back to the previous key
                last = next(reversed(fields))
                fields[last] += " " + token
        jobs.append(fields)
    return jobs


def show_job(job_id: str) -> list[dict[str, str]]:
    """The job's records (one per array task); [] when Slurm no longer knows it (or is unreachable)."""
    try:
        out = _run(["scontrol", "show", "job", "-o", str(job_id)], timeout=30)
    except (SlurmError, subprocess.SubprocessError):
        return []
    return parse_show_job(out.stdout) if out.returncode == 0 else []
