"""Rollout, rewards, RL, evaluation and cluster sections."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from echo_megatron.rewards.policy import SandboxPolicy

_POLICY = SandboxPolicy()  # the sandbox defaults


@dataclass
class RolloutConfig:
    """Sampling for RL, eval and ``echo-megatron generate`` (``rollout:`` section); see docs/rollout.md.

    The names are the keyword arguments of ``Sampler.generate`` (echo_megatron/rollout/backend.py
    ``SamplingParams.from_config``). Log-probs returned with each sample are log_softmax(logits / temperature)
    at the sampled token (temperature 1 for greedy), unaffected by top-k / top-p.
    """

    max_new_tokens: int = 256
    temperature: float = 0.7  # 0 = greedy
    top_p: float = 1.0  # nucleus sampling; 1.0 = off
    top_k: int = 0  # 0 = off
    n: int = 8  # samples per prompt
    batch_size: int = 64  # sequences decoded together (rows of the preallocated KV cache)
    stop: list[str] = field(default_factory=list)  # stop strings; the response text is cut before them
    seed: int = 0  # each sequence draws from its own generator seeded by (seed, prompt index, sample index)
    backend: str = "megatron"  # megatron: the in-process KV-cache sampler on the training weights


@dataclass
class RewardConfig:
    """Verifiable rewards (``rewards:`` section): see echo_megatron/rewards/ (score, verifiers, sandbox, worker).

    The sandbox keys are the fields of ``echo_megatron.rewards.policy.SandboxPolicy`` (their defaults come from
    it; ``SandboxPolicy.from_config`` reads them back)."""

    task: str = "gsm8k"  # gsm8k | math | testbed | aime | amc
    verifier: str = "strict"  # how an answer is found and compared: a key of rewards.verifiers.VERIFIERS
    reward: str = "binary"  # correctness -> reward: a key of rewards.score.REWARDS
    last_number_fallback: bool = True  # nl answers: take the last number when there is no final answer
    rel_tol: float = 1e-6  # fraction golds: |p - g| <= rel_tol * |g| (see rewards/equivalence.py)
    correct_reward: float = 1.0
    wrong_reward: float = 0.0
    sandbox_workers: int = _POLICY.workers  # pre-forked sandbox worker processes
    timeout_s: float = _POLICY.timeout_s  # wall-clock limit per program (CPU rlimit = ceil of it)
    memory_mb: int = _POLICY.memory_mb  # address space a program may add on top of the interpreter
    max_output_bytes: int = (
        _POLICY.max_output_bytes
    )  # stdout+stderr cap per program (also its file-size rlimit)
    sandbox_namespaces: bool = _POLICY.namespaces  # PID, mount (the filesystem view), network, IPC, UTS
    sandbox_privdrop: bool = _POLICY.privdrop  # as root: programs run under a per-worker uid leased host-wide
    sandbox_seccomp: bool = _POLICY.seccomp  # the seccomp allow list (no fork/exec/sockets/file writes)
    # run programs even where a layer is missing (no namespaces / seccomp / uid): else the pool refuses to start
    sandbox_unsafe_ok: bool = _POLICY.unsafe_ok
    sandbox_uid: int = _POLICY.uid_base  # first uid of the host-wide lease range (root)
    # modules imported once per worker; "heavy" ones live in separate workers (see SandboxPolicy)
    sandbox_preload: list[str] = field(default_factory=lambda: list(_POLICY.preload))
    sandbox_preload_heavy: list[str] = field(default_factory=lambda: list(_POLICY.preload_heavy))


@dataclass
class RLConfig:
    """RL post-training (``rl:`` section). Names follow NeMo-Aligner 0.7.0 where it has the knob.

    Mapping to NeMo-Aligner 0.7.0 (examples/nlp/gpt/conf/gpt_ppo_actor.yaml, gpt_ppo_critic.yaml,
    gpt_reinforce_actor.yaml at tag v0.7.0; defaults there in brackets):
        num_rollout_samples        model.ppo.num_rollout_samples / model.reinforce.num_rollout_samples [512]:
                                   prompts drawn per step (the rollout dataloader's global batch)
        rollout.n (RolloutConfig)  trainer.reinforce.num_rollouts_per_prompt [4]; NeMo's PPO draws 1 per prompt
        initial_policy_kl_penalty  trainer.ppo.initial_policy_kl_penalty / trainer.reinforce.* [0.01]
        kl_estimator = abs         trainer.ppo.use_absolute_kl: True [True]; kl_estimator = k1 is use_absolute_kl:
                                   False (the paper's setting); k2 / k3 and the GRPO KL loss are not in NeMo-Aligner
        discount_factor            trainer.ppo.discount_factor [1.0]
        gae_lambda                 trainer.ppo.gae_lambda [0.95]
        normalize_advantages       trainer.ppo.normalize_advantages [True] (batch whitening of PPO advantages)
        ratio_eps                  model.ppo.ratio_eps [0.2] (PPO clip)
        entropy_bonus              model.ppo.entropy_bonus [0.0]
        loss_clip_val              critic model.loss_clip_val [0.2] (value clipping; <= 0 disables)
        actor_lr / critic_lr       actor / critic model.optim.lr [9e-7 / 9e-6]
        micro_batch_size           model.micro_batch_size
        steps / epochs             trainer.ppo.max_steps / trainer.ppo.max_epochs
    Not in NeMo-Aligner: algorithm grpo (NeMo-RL; Shao et al. 2024) and its ``grpo_scale_by_std`` (NeMo-RL's
    grpo.normalize_rewards; False = Dr. GRPO), reinforce_pp (Hu 2025), ei, ``ppo_epochs`` (NeMo makes one pass
    over each rollout), ``loss_agg`` (NeMo: token_mean) and ``adv_eps``. The math is in echo_megatron/rl/functional.py.
    """

    algorithm: str = "grpo"  # ppo | grpo | reinforce_pp | ei
    seed: int = 0  # prompt order (epoch permutations)
    prompts: str = "gsm8k"  # a task name or a JSONL path with question/answer
    num_rollout_samples: int = 64  # prompts per step (samples per prompt: rollout.n)
    steps: int = 100
    epochs: int = 10  # passes over the prompt set (caps steps)
    ppo_epochs: int = 1  # optimisation passes over each rollout batch
    micro_batch_size: int = 8
    actor_lr: float = 1e-6
    critic_lr: float = 7e-6
    ratio_eps: float = 0.2  # PPO clip epsilon
    loss_clip_val: float = 0.2  # critic value clip
    initial_policy_kl_penalty: float = 0.0  # KL coefficient beta
    # auto (k1 reward penalty for ppo / reinforce_pp, k3 loss for grpo) | k1 | abs | k2 | k3
    kl_estimator: str = "auto"
    discount_factor: float = 1.0  # gamma
    gae_lambda: float = 0.95
    normalize_advantages: bool = True  # PPO: whiten advantages over the batch
    grpo_scale_by_std: bool = True  # GRPO: divide by the group std (False = Dr. GRPO)
    entropy_bonus: float = 0.0
    # token_mean | seq_mean_token_mean | seq_mean_token_sum | seq_mean_token_sum_norm (rl/functional.py)
    loss_agg: str = "token_mean"
    adv_eps: float = 1e-6  # GRPO std epsilon
    sample_interval: int = 10  # write generations every N steps
    # Expert Iteration
    ei_rounds: int = 3
    ei_samples: int = 64
    ei_temperature: float = 1.0
    ei_top_p: float = 0.95
    ei_max_per_question: Optional[int] = None  # cap on unique correct solutions kept per question
    ei_sft_epochs: int = 2
    ei_sft_lr: float = 1e-4
    ei_sft_batch: int = 256
    ei_from_base: bool = True
    base: Optional[str] = None  # pretrained base checkpoint


@dataclass
class EvalConfig:
    """``echo-megatron eval``: tasks from ``echo_megatron.eval.tasks``; estimators from ``eval.estimators``.

    pass@1 is greedy when ``greedy`` is set; pass@k and maj@k use ``n`` samples per problem at
    ``temperature`` (ks larger than n are skipped).
    """

    tasks: list[str] = field(default_factory=lambda: ["gsm8k"])  # gsm8k | math500 | aime24 | amc23 | testbed
    paths: dict[str, str] = field(default_factory=dict)  # task -> local file overriding the shipped / hub one
    max_problems: Optional[int] = None  # the first N problems of each task
    greedy: bool = True  # a greedy pass for pass@1 (and the per-format table of greedy answers)
    n: int = 1  # samples per problem for pass@k / maj@k; 1 = greedy only
    ks: list[int] = field(default_factory=lambda: [1, 8, 64])
    temperature: float = 0.7  # for the n samples
    top_p: float = 1.0
    maj_expected: bool = False  # maj@k as the exact expectation over k-subsets of the n (else the first k)
    max_new_tokens: int = 512
    batch_size: int = 64  # sequences decoded together
    seed: int = 0


@dataclass
class ClusterConfig:
    """Slurm jobs (``echo-megatron submit``) and capacity plans (``echo-megatron plan``); see docs/cluster.md."""

    nodes: int = 1
    gpus_per_node: int = 8  # ranks per node (GPUs; on a CPU-only cluster: processes)
    gpus: Optional[bool] = None  # request --gpus-per-node; None = unless parallel.device is cpu
    partition: Optional[str] = None
    account: Optional[str] = None
    time: str = "04:00:00"
    # torchrun (one srun task per node, c10d rendezvous) | srun (one task per rank)
    launcher: str = "torchrun"
    # pyxis/enroot image (nvcr.io#nvidia/pytorch:..., a .sqsh) or an Apptainer .sif
    container: Optional[str] = None
    container_runtime: str = "auto"  # auto (.sif = apptainer, else pyxis) | pyxis | apptainer
    container_mounts: Optional[str] = None  # SRC:DST[,SRC:DST...]; the submit directory is always mounted
    cpus_per_task: Optional[int] = None  # CPUs per srun task (torchrun: the whole node's share)
    mem: Optional[str] = None  # --mem ("0" = all of the node's memory)
    exclusive: bool = True  # --exclusive nodes
    # --signal=B:USR1@N: save a checkpoint and requeue N seconds before the time limit
    signal_lead_s: int = 120
    requeue: bool = True  # requeue after a USR1 save (time limit / preemption warning)
    max_requeues: int = 50  # stop requeueing after this many restarts (SLURM_RESTART_COUNT)
    master_port: int = 29500  # the job's rendezvous port is master_port + SLURM_JOB_ID % 10000
    python: str = "python"  # interpreter on the compute nodes (inside the container if any)
    setup: list[str] = field(default_factory=list)  # shell lines run before the launch (module load, venv)
    env: dict[str, str] = field(default_factory=dict)  # environment for the job, over the NCCL defaults
    sbatch_args: list[str] = field(default_factory=list)  # extra #SBATCH options, e.g. ["--qos=high"]
    mfu: float = 0.4  # assumed model FLOPs utilisation for plans
    peak_tflops: float = 989.0  # per-GPU dense bf16 peak for plans (H100 SXM)
    gpu_memory_gb: float = 80.0  # per-GPU memory for the plan's fits verdict
