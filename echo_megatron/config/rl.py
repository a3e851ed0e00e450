"""Rollout, rewards, RL, evaluation and cluster sections."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from echo_megatron.rewards.policy import SandboxPolicy

LR_DECAY_STYLES = ("constant", "cosine", "linear")
PROMPT_TEMPLATES = ("separator", "raw")
# rl.loss_agg: the modes of echo_megatron.rl.functional.aggregate_loss (formulas there)
LOSS_AGG_MODES = (
    "token_mean",
    "seq_mean_token_mean",
    "seq_mean_token_sum",
    "seq_mean_token_sum_norm",
    "micro_token_mean",
)
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
class FormatsConfig:
    """Output-format labels (``formats:`` section): how a completion's format is named in rewards, RL metrics and
    eval (see echo_megatron/rewards/formats.py and paper.py).

    classifier   strict: this project's structural classifier (``formats.classify_format``: the first marker
                 of a family decides; ``code``, ``code_interp``, ``nl``, ``other``, ``empty``) | paper: the
                 paper's ``response_type`` (``'<llm-code>' in text`` -> ``code_interp`` when its code gave a value
                 or ``'def'`` is not in the text; else ``'def' in text`` -> ``code``; else ``nl``; in eval an
                 exception -> ``nl``), which depends on the code run, so it needs ``rewards.verifier: paper``.
    """

    classifier: str = "strict"


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

    Mini-batches, schedules and prompts (OpenRLHF's names where it has them, as the paper's code uses OpenRLHF):
        train_batch_size    samples (sequences) per optimizer step, for the actor and for the critic
                            (OpenRLHF --train_batch_size). A rollout of num_rollout_samples x rollout.n samples
                            is shuffled and cut into rollout / train_batch_size optimizer steps, ppo_epochs times
                            over; the policy moves between them, so the PPO ratio leaves 1 and the clip acts.
                            null = the whole rollout in one optimizer step. The paper: 64 of 512 = 8 steps.
        lr_warmup_ratio     linear warmup from 0 over ceil(ratio x total optimizer steps) (OpenRLHF
                            --lr_warmup_ratio; transformers' cosine_with_min_lr); the paper: 0.03.
        lr_decay_style      constant | cosine | linear, from the peak to the floor at the last optimizer step.
        min_lr_ratio        the floor as a fraction of each model's peak (actor_lr, critic_lr, ei_sft_lr); the
                            paper: 0.1 (actor 1e-6 -> 1e-7, EI SFT 1e-4 -> 1e-5).
        critic_min_lr       an absolute floor for the critic instead of critic_lr x min_lr_ratio. The paper's
                            critic ran at the actor's 1e-6 (its create_optimizer reads actor_learning_rate for
                            every model) with the floor 0.1 x its configured 7e-6 = 7e-7: critic_lr 1e-6,
                            critic_min_lr 7e-7 reproduce that; critic_lr 7e-6 with null is the paper's intent.
        prompt_template     separator: question + "\\n\\n", the prefix of the pretraining documents (the model
                            continues with a solution) | raw: the question alone, the model writes the
                            separator itself (the paper, no chat template). Applies to RL, EI and eval prompts.
        ei_accumulate       Expert Iteration trains each round on the correct samples of all rounds so far (true)
                            or of the current round only (false: the paper).
        ei_max_new_tokens   EI generation length; null = rollout.max_new_tokens (the paper: 2,048 for EI,
                            1,024 in RL).
    The total number of optimizer steps the schedules span: rl_lr_schedule().
    """

    algorithm: str = "grpo"  # ppo | grpo | reinforce_pp | ei
    seed: int = 0  # prompt order (epoch permutations)
    prompts: str = "gsm8k"  # a task name or a JSONL path with question/answer
    num_rollout_samples: int = 64  # prompts per step (samples per prompt: rollout.n)
    steps: int = 100
    epochs: int = 10  # passes over the prompt set (caps steps)
    ppo_epochs: int = 1  # optimisation passes over each rollout batch
    micro_batch_size: int = 8
    train_batch_size: Optional[int] = (
        None  # samples per optimizer step (actor and critic); null = the rollout
    )
    actor_lr: float = 1e-6
    critic_lr: float = 7e-6
    lr_warmup_ratio: float = 0.0  # warmup = ceil(ratio x optimizer steps of the run), from 0
    lr_decay_style: str = "constant"  # constant | cosine | linear (to the floor at the last optimizer step)
    min_lr_ratio: float = 1.0  # floor = peak x min_lr_ratio (actor, critic, EI SFT)
    critic_min_lr: Optional[float] = None  # absolute critic floor; null = critic_lr x min_lr_ratio
    prompt_template: str = "separator"  # separator (question + "\n\n") | raw (the question alone)
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
    # token_mean | seq_mean_token_mean | seq_mean_token_sum | seq_mean_token_sum_norm | micro_token_mean (the
    # paper: a token mean per micro-batch, averaged over the optimizer step's micro-batches, for the critic's
    # value loss too; the critic is a token mean otherwise; rl/functional.py)
    loss_agg: str = "token_mean"
    adv_eps: float = 1e-6  # GRPO std epsilon
    sample_interval: int = 10  # write generations every N steps
    # Expert Iteration
    ei_rounds: int = 3
    ei_samples: int = 64
    ei_temperature: float = 1.0
    ei_top_p: float = 0.95
    ei_max_per_question: Optional[int] = None  # cap on unique correct solutions kept per question
    ei_accumulate: bool = True  # SFT on the correct samples of every round so far (false: this round's only)
    ei_max_new_tokens: Optional[int] = None  # EI generation length; null = rollout.max_new_tokens
    ei_sft_epochs: int = 2
    ei_sft_lr: float = 1e-4
    ei_sft_batch: int = 256
    ei_from_base: bool = True
    base: Optional[str] = None  # pretrained base checkpoint


@dataclass(frozen=True)
class LRSchedule:
    """One model's RL / EI learning-rate schedule over ``total_steps`` optimizer steps (see rl_lr_schedule)."""

    peak: float
    floor: float
    warmup_steps: int
    decay_style: str
    total_steps: int


def updates_per_rollout(rl: Any, rollout_n: int) -> int:
    """Optimizer steps of the actor (and of the critic) per rollout: ppo_epochs x (num_rollout_samples x
    rollout_n / train_batch_size), or ppo_epochs when train_batch_size is null (the whole rollout per step)."""
    if rl.train_batch_size is None:
        return int(rl.ppo_epochs)
    return int(rl.ppo_epochs) * (rl.num_rollout_samples * rollout_n // rl.train_batch_size)


def lr_at(schedule: LRSchedule, step: int) -> float:
    """The LR of optimizer step ``step`` (0-based: the first step runs at lr_at(s, 0)).

    With peak P, floor F, warmup W and total N (megatron's OptimizerParamScheduler.get_lr as
    training/setup.py builds it; transformers' get_cosine_with_min_lr_schedule_with_warmup is the same curve):
        step < W              P * step / W                            (linear warmup from 0)
        constant              P
        step >= N             F
        else, r = (step - W) / (N - W):
            linear            F + (P - F) * (1 - r)
            cosine            F + (P - F) * 0.5 * (1 + cos(pi * r))
    """
    s = schedule
    if s.warmup_steps > 0 and step <= s.warmup_steps:
        return s.peak * step / s.warmup_steps
    if s.decay_style == "constant":
        return s.peak
    decay_steps = max(s.total_steps, s.warmup_steps + 1)
    if step >= decay_steps:
        return s.floor
    r = (step - s.warmup_steps) / (decay_steps - s.warmup_steps)
    if s.decay_style == "linear":
        coeff = 1.0 - r
    elif s.decay_style == "cosine":
        coeff = 0.5 * (math.cos(math.pi * r) + 1.0)
    else:
        raise ValueError(f"unknown LR decay style '{s.decay_style}' ({' | '.join(LR_DECAY_STYLES)})")
    return s.floor + coeff * (s.peak - s.floor)


def rl_lr_schedule(rl: Any, model: str, total_steps: int) -> LRSchedule:
    """The schedule of ``model`` (actor | critic | ei_sft) under ``rl`` (an RLConfig) over ``total_steps``.

    warmup_steps = ceil(rl.lr_warmup_ratio * total_steps) (transformers' get_scheduler, as OpenRLHF calls it),
    floor = peak * rl.min_lr_ratio, or rl.critic_min_lr for the critic when set. ``total_steps`` counts optimizer
    steps: rollouts x (rollout samples / train_batch_size) x ppo_epochs in RL (the paper's OpenRLHF computes its
    horizon from the prompt count, 10 x (7,473 x 8 // 64) = 9,340, while the 1,160 rollouts run 9,280 steps),
    epochs x (examples // batch) per EI round.
    """
    peak = {"actor": rl.actor_lr, "critic": rl.critic_lr, "ei_sft": rl.ei_sft_lr}[model]
    floor = peak * rl.min_lr_ratio
    if model == "critic" and rl.critic_min_lr is not None:
        floor = rl.critic_min_lr
    warmup = math.ceil(rl.lr_warmup_ratio * total_steps)
    return LRSchedule(float(peak), float(floor), int(warmup), str(rl.lr_decay_style), int(total_steps))


@dataclass
class EvalConfig:
    """``echo-megatron eval``: tasks from ``echo_megatron.eval.tasks``; estimators from ``eval.estimators``.

    pass@1 is greedy when ``greedy`` is set; pass@k and maj@k use ``n`` samples per problem at
    ``temperature`` (ks larger than n are skipped).
    """

    # gsm8k | gsm8k_train | math500 | math_train | aime90 | aime24 | aime | amc23 | testbed (eval/tasks.py)
    tasks: list[str] = field(default_factory=lambda: ["gsm8k"])
    paths: dict[str, str] = field(default_factory=dict)  # task -> local file overriding the shipped / hub one
    max_problems: Optional[int] = None  # the first N problems of each task
    greedy: bool = True  # a greedy pass for pass@1 (and the per-format table of greedy answers)
    n: int = 1  # samples per problem for pass@k / maj@k; 1 = greedy only
    sample_problems: Optional[int] = (
        None  # the n samples on the first N problems only (greedy: all); None = all
    )
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
