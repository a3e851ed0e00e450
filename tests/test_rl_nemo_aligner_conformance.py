"""Our RL math equals NeMo-Aligner 0.7.0's (``nemo_aligner/utils/ppo_utils.py``) on random ragged batches.

NeMo-Aligner (PyPI ``nemo-aligner==0.7.0``, its final release) is installed with ``--no-deps`` by tests/run.sh. Its
``ppo_utils.py`` is pure torch but does ``from nemo_aligner.utils.utils import masked_mean`` at import time, and
``utils/utils.py`` imports NeMo, megatron and omegaconf at module level. How we load it without NeMo:

  * ``nemo_aligner.utils.utils`` is replaced, only while ppo_utils is imported, by a module built from the
    installed ``utils/utils.py`` itself: its AST keeps the import statements of the standard library and torch
    and the definitions of ``masked_mean``, ``masked_std`` and their decorator ``surpress_user_warnings``, and
    drops everything else. The functions run from NeMo-Aligner's own source (their code objects point at the
    installed file); nothing of ours stands in for them.
  * ``ppo_utils.py`` and its shipped tests ``nemo_aligner/utils/tests/ppo_utils_test.py`` are then imported
    unchanged; sys.modules and os.environ are restored afterwards.
  * ``normalize_tensor`` / ``masked_global_mean_var`` (``utils/distributed.py``, behind
    ``trainer.ppo.normalize_advantages``) are built the same way, with one AST rewrite: ``torch.cuda.current_device()``
    becomes ``"cpu"``. Their all-reduces run for real, over a one-process gloo group.

The wheel ships NeMo-Aligner's own ppo_utils tests; they are run here (test_nemo_aligner_own_ppo_utils_tests).
Not executable this way, and checked by reading instead (docstrings in echo_megatron/rl/functional.py): the actor
and critic losses, which are closures inside the megatron model classes. If nemo-aligner is not installed, every
test here fails with the install command: this is a conformance check, never skipped.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import os
import sys
import types
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.distributed as dist
from rl_reference import masked_var, rloo_baseline

from echo_megatron.rl import functional as F

NEMO_ALIGNER_VERSION = "0.7.0"
INSTALL = f"pip install --no-deps nemo-aligner=={NEMO_ALIGNER_VERSION} (tests/run.sh does this)"
ATOL = 1e-6


def _package_dir() -> Path | None:
    try:
        dist_info = importlib.metadata.distribution("nemo-aligner")
    except importlib.metadata.PackageNotFoundError:
        return None
    return Path(str(dist_info.locate_file("nemo_aligner")))


def _keeps_import(node: ast.stmt) -> bool:
    """Imports of the standard library and torch survive; NeMo, megatron, omegaconf, relative ones do not."""
    if isinstance(node, ast.Import):
        return all(a.name.split(".")[0] in sys.stdlib_module_names | {"torch"} for a in node.names)
    if isinstance(node, ast.ImportFrom):
        return node.level == 0 and node.module.split(".")[0] in sys.stdlib_module_names | {"torch"}
    return False


class _CudaDeviceToCpu(ast.NodeTransformer):
    """torch.cuda.current_device() -> "cpu" (counts its rewrites)."""

    count = 0

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if ast.unparse(node.func) == "torch.cuda.current_device":
            self.count += 1
            return ast.copy_location(ast.Constant("cpu"), node)
        return node


def _module_from_functions(name: str, path: Path, functions: set[str], cuda_to_cpu: bool = False):
    tree = ast.parse(path.read_text(), filename=str(path))
    body = [
        node
        for node in tree.body
        if _keeps_import(node) or (isinstance(node, ast.FunctionDef) and node.name in functions)
    ]
    found = {node.name for node in body if isinstance(node, ast.FunctionDef)}
    assert found == functions, f"{path} no longer defines {sorted(functions - found)}"
    module_ast = ast.Module(body=body, type_ignores=[])
    if cuda_to_cpu:
        rewriter = _CudaDeviceToCpu()
        module_ast = rewriter.visit(module_ast)
        assert rewriter.count > 0, f"{path}: expected torch.cuda.current_device() calls to rewrite"
    module = types.ModuleType(name)
    module.__file__ = str(path)
    exec(compile(ast.fix_missing_locations(module_ast), str(path), "exec"), module.__dict__)
    return module


@pytest.fixture(scope="module")
def nemo() -> types.SimpleNamespace:
    """NeMo-Aligner's ppo_utils, utils shim, distributed helpers and own test module, loaded without NeMo."""
    root = _package_dir()
    if root is None:
        pytest.fail(f"nemo-aligner is not installed: {INSTALL}")
    version = importlib.metadata.version("nemo-aligner")
    assert version == NEMO_ALIGNER_VERSION, f"nemo-aligner {version} installed, conformance pinned to 0.7.0"
    utils = _module_from_functions(
        "nemo_aligner.utils.utils",
        root / "utils" / "utils.py",
        {"surpress_user_warnings", "masked_mean", "masked_std"},
    )
    distributed = _module_from_functions(
        "nemo_aligner.utils.distributed",
        root / "utils" / "distributed.py",
        {"masked_global_mean_var", "normalize_tensor"},
        cuda_to_cpu=True,
    )
    with mock.patch.dict(sys.modules), mock.patch.dict(os.environ):
        sys.modules["nemo_aligner.utils.utils"] = utils
        ppo_utils = importlib.import_module("nemo_aligner.utils.ppo_utils")
        own_tests = importlib.import_module("nemo_aligner.utils.tests.ppo_utils_test")
    assert Path(ppo_utils.__file__).resolve().parent == (root / "utils").resolve()
    return types.SimpleNamespace(ppo=ppo_utils, utils=utils, distributed=distributed, own_tests=own_tests)


@pytest.fixture(scope="module")
def gloo_group():
    """A one-process gloo group for NeMo-Aligner's all-reduces (the world of one trainer process)."""
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    group = dist.new_group(ranks=[0], backend="gloo")
    assert dist.get_world_size(group) == 1
    yield group
    if created:
        dist.destroy_process_group()


def _rollout_batch(seed: int, batch: int, seq: int, dtype: torch.dtype):
    """A NeMo-Aligner-shaped rollout: tokens of length ``seq``, log-prob tensors of ``seq - 1``, ragged prompts
    and responses (prompt_lengths p >= 1, response_lengths = total lengths L with p < L <= seq)."""
    g = torch.Generator().manual_seed(seed)
    width = seq - 1
    prompt_lengths = torch.randint(1, max(2, seq // 3), (batch,), generator=g)
    response_lengths = torch.stack(
        [torch.randint(int(p) + 1, seq + 1, (1,), generator=g)[0] for p in prompt_lengths]
    )
    return {
        "prompt_lengths": prompt_lengths,
        "response_lengths": response_lengths,
        "values": torch.randn(batch, width, generator=g, dtype=dtype),
        "scores": torch.randn(batch, generator=g, dtype=dtype),
        "logprobs": -torch.rand(batch, width, generator=g, dtype=dtype) * 5,
        "init_logprobs": -torch.rand(batch, width, generator=g, dtype=dtype) * 5,
    }


SHAPES = [
    (0, 1, 2, torch.float64),
    (1, 4, 9, torch.float64),
    (2, 16, 33, torch.float64),
    (3, 8, 64, torch.float32),
]
SHAPES_F32 = [(seed, batch, seq) for seed, batch, seq, _ in SHAPES]  # the tests whose NeMo side is float32


def close_on(ours: torch.Tensor, theirs: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    if mask is not None:
        keep = mask.bool()
        ours, theirs = ours[keep], theirs[keep]
    torch.testing.assert_close(ours, theirs.to(ours.dtype), atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("seed,batch,seq,dtype", SHAPES)
def test_response_mask_equals_create_mask(nemo, seed, batch, seq, dtype):
    b = _rollout_batch(seed, batch, seq, dtype)
    theirs = nemo.ppo.create_mask(b["values"], b["prompt_lengths"], b["response_lengths"])
    ours = F.span_mask(b["prompt_lengths"] - 1, b["response_lengths"] - 1, seq - 1)
    assert torch.equal(ours, theirs.to(ours.dtype)) and ours.sum() > 0


@pytest.mark.parametrize("seed,batch,seq,dtype", SHAPES)
@pytest.mark.parametrize("absolute", [True, False])
def test_kl_penalty(nemo, seed, batch, seq, dtype, absolute):
    b = _rollout_batch(seed, batch, seq, dtype)
    theirs = nemo.ppo.calculate_kl_penalty(b["logprobs"], b["init_logprobs"], use_absolute_kl=absolute)
    close_on(F.kl_estimate(b["logprobs"], b["init_logprobs"], "abs" if absolute else "k1"), theirs)


@pytest.mark.parametrize("seed,batch,seq,dtype", SHAPES)
@pytest.mark.parametrize("kl_coef", [0.0, 0.01, 0.3])
def test_ppo_rewards(nemo, seed, batch, seq, dtype, kl_coef):
    b = _rollout_batch(seed, batch, seq, dtype)
    mask = nemo.ppo.create_mask(b["values"], b["prompt_lengths"], b["response_lengths"])
    kl = nemo.ppo.calculate_kl_penalty(b["logprobs"], b["init_logprobs"], use_absolute_kl=False)
    theirs = nemo.ppo.calculate_ppo_rewards(b["values"], b["scores"], b["response_lengths"], kl, kl_coef)
    close_on(F.ppo_token_rewards(b["scores"], kl, mask, kl_coef), theirs, mask)


@pytest.mark.parametrize("seed,batch,seq,dtype", SHAPES)
@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 0.9), (0.5, 0.0), (1.0, 1.0)])
def test_gae_advantages_and_returns(nemo, seed, batch, seq, dtype, gamma, lam):
    b = _rollout_batch(seed, batch, seq, dtype)
    mask = nemo.ppo.create_mask(b["values"], b["prompt_lengths"], b["response_lengths"])
    rewards = torch.randn(b["values"].shape, generator=torch.Generator().manual_seed(seed + 100), dtype=dtype)
    adv, ret = nemo.ppo.calculate_advantages_and_returns(b["values"], rewards, gamma, lam, mask=mask)
    our_adv, our_ret = F.gae_advantages_and_returns(rewards, b["values"], mask, gamma, lam)
    close_on(our_adv, adv, mask)
    close_on(our_ret, ret, mask)


@pytest.mark.parametrize("seed,batch,seq", SHAPES_F32)
def test_ppo_rollout_pipeline_with_advantage_normalisation(nemo, gloo_group, seed, batch, seq):
    """NeMo-Aligner's PPOTrainer.generate_ppo_data math (KL -> rewards -> mask -> GAE -> whitening), step by step
    with its functions, against ours, at the defaults of gpt_ppo_actor.yaml (use_absolute_kl True, beta 0.01).
    float32 throughout: masked_global_mean_var accumulates in float32 whatever the input dtype."""
    dtype = torch.float32
    b = _rollout_batch(seed, batch, seq, dtype)
    kl = nemo.ppo.calculate_kl_penalty(b["logprobs"], b["init_logprobs"], use_absolute_kl=True)
    rewards = nemo.ppo.calculate_ppo_rewards(b["values"], b["scores"], b["response_lengths"], kl, 0.01)
    mask = nemo.ppo.create_mask(b["values"], b["prompt_lengths"], b["response_lengths"])
    adv, ret = nemo.ppo.calculate_advantages_and_returns(b["values"], rewards, 1.0, 0.95, mask=mask)
    mean, var = nemo.distributed.masked_global_mean_var(adv, mask, group=gloo_group)
    theirs = nemo.distributed.normalize_tensor(adv, mask, group=gloo_group)

    our_mask = F.span_mask(b["prompt_lengths"] - 1, b["response_lengths"] - 1, seq - 1).to(dtype)
    our_kl = F.kl_estimate(b["logprobs"], b["init_logprobs"], "abs")
    our_rewards = F.ppo_token_rewards(b["scores"], our_kl, our_mask, 0.01)
    our_adv, our_ret = F.gae_advantages_and_returns(our_rewards, b["values"], our_mask, 1.0, 0.95)
    close_on(our_ret, ret, mask)
    close_on(F.masked_mean(our_adv, our_mask), mean)
    close_on(masked_var(our_adv, our_mask), var)
    close_on(F.masked_whiten(our_adv, our_mask), theirs, mask)


@pytest.mark.parametrize("seed,batch,seq,dtype", SHAPES)
def test_masked_mean_and_std(nemo, seed, batch, seq, dtype):
    b = _rollout_batch(seed, batch, seq, dtype)
    mask = nemo.ppo.create_mask(b["values"], b["prompt_lengths"], b["response_lengths"])
    close_on(F.masked_mean(b["values"], mask), nemo.utils.masked_mean(b["values"], mask))
    close_on(F.masked_mean(b["values"], mask, dim=-1), nemo.utils.masked_mean(b["values"], mask, dim=-1))
    if mask.sum() > 1:
        close_on(
            masked_var(b["values"], mask, unbiased=True).sqrt(), nemo.utils.masked_std(b["values"], mask)
        )


@pytest.mark.parametrize("seed,batch,seq", SHAPES_F32)
def test_reinforce_rollout_pipeline_rloo(nemo, seed, batch, seq):
    """NeMo-Aligner's ReinforceTrainer.generate_reinforce_data math: sequence KL = per-token KL masked-mean,
    rewards_with_kl = r - beta * KL, RLOO baseline over identical prompts, is_end as the validity mask.
    float32: calculate_rloo_baseline's leave-one-out matrix is float32 whatever the reward dtype."""
    dtype = torch.float32
    b = _rollout_batch(seed, batch, seq, dtype)
    g = torch.Generator().manual_seed(seed + 200)
    num_prompts = max(1, batch // 3)
    prompt_of = torch.randint(0, num_prompts, (batch,), generator=g)  # ragged, shuffled groups
    prompt_tokens = torch.randint(0, 50, (num_prompts, 5), generator=g)[prompt_of]
    is_end = (torch.rand(batch, generator=g) < 0.7).to(dtype)
    mask = nemo.ppo.create_mask(b["logprobs"], b["prompt_lengths"], b["response_lengths"])
    kl = nemo.ppo.calculate_kl_penalty(b["logprobs"], b["init_logprobs"], use_absolute_kl=True)
    rewards_with_kl = b["scores"] - 0.01 * nemo.utils.masked_mean(kl, mask, dim=-1)
    theirs = nemo.ppo.calculate_rloo_baseline(prompts=prompt_tokens, reward=rewards_with_kl, mask=is_end)

    groups = torch.unique(prompt_tokens, dim=0, return_inverse=True)[1]
    our_rewards = b["scores"] - 0.01 * F.masked_mean(
        F.kl_estimate(b["logprobs"], b["init_logprobs"], "abs"), mask, -1
    )
    close_on(our_rewards, rewards_with_kl)
    close_on(rloo_baseline(our_rewards, groups, is_end), theirs)
    close_on(
        rloo_baseline(our_rewards, groups),
        nemo.ppo.calculate_rloo_baseline(prompt_tokens, rewards_with_kl, torch.ones(batch)),
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_entropy(nemo, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 10, 17, generator=g, dtype=torch.float64) * 3
    mask = F.span_mask(torch.randint(0, 3, (3,), generator=g), torch.randint(4, 11, (3,), generator=g), 10)
    log_probs = torch.log_softmax(logits, dim=-1)
    close_on(F.masked_mean(F.entropy_from_logits(logits), mask), nemo.ppo.calculate_entropy(log_probs, mask))
    close_on(F.entropy_from_logits(logits).mean(), nemo.ppo.calculate_entropy(log_probs))


def _own_test_names() -> list[str]:
    """Class::method names of the tests shipped in the wheel, read from the file without importing it."""
    root = _package_dir()
    path = None if root is None else root / "utils" / "tests" / "ppo_utils_test.py"
    if path is None or not path.is_file():
        return ["<nemo_aligner/utils/tests/ppo_utils_test.py not installed>"]
    names = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            names += [
                f"{node.name}::{m.name}"
                for m in node.body
                if isinstance(m, ast.FunctionDef) and m.name.startswith("test")
            ]
    return names


@pytest.mark.parametrize("name", _own_test_names())
def test_nemo_aligner_own_ppo_utils_tests(nemo, name):
    """NeMo-Aligner's own tests of its ppo_utils (entropy, PPO rewards, GAE, RLOO baseline), run unchanged."""
    class_name, method = name.split("::")
    getattr(getattr(nemo.own_tests, class_name)(), method)()


def test_nemo_aligner_ships_its_ppo_utils_tests():
    names = _own_test_names()
    assert len(names) >= 7 and not names[0].startswith("<"), names
