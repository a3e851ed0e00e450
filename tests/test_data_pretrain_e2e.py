"""End to end: the pretraining loop consumes a preprocessed mixture (testbed -> preprocess -> pretrain CLI).

Both row layouts: document-aligned rows with the loss on solutions only (the demo's), and packed rows.
The run must log every step with a finite, falling loss, and draw its samples from every source of the mixture
in the blend's proportions (the trainer logs ``samples/<source>`` per step).
"""

from __future__ import annotations

import json

import pytest
from echo_testing import cli
from test_data_common import DEMO

TINY = [
    "model.num_layers=2",
    "model.hidden_size=64",
    "model.num_attention_heads=4",
    "model.ffn_hidden_size=128",
]


@pytest.fixture(scope="module")
def testbed(tmp_path_factory):
    out = tmp_path_factory.mktemp("tb")
    small = [
        f"testbed.out={out}",
        "testbed.n_train=2000",
        "testbed.n_test=20",
        "testbed.tokenizer_vocab_size=512",
    ]
    cli(["testbed", DEMO, *small])
    cli(["preprocess", DEMO, *small, "data.num_workers=1"])
    return out, small


@pytest.mark.parametrize("aligned", [True, False], ids=["aligned-solution-loss", "packed"])
def test_pretrain_consumes_the_preprocessed_mixture(testbed, tmp_path, aligned):
    out, small = testbed
    run_dir = tmp_path / "run"
    mode = ["data.document_aligned=true", "data.loss_on=solution"] if aligned else [
        "data.document_aligned=false", "data.loss_on=all"]  # fmt: skip
    steps = 12
    cli(["pretrain", DEMO, *small, *TINY, *mode, f"run_dir={run_dir}", f"train.steps={steps}",
         "train.global_batch_size=16", "train.micro_batch_size=8", "schedule.warmup_steps=0",
         "optimizer.lr=3e-3", "logging.progress_bar=false", "logging.tensorboard=false",
         "model.seq_length=96"], timeout=600)  # fmt: skip
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("phase") == "pretrain"]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    losses = [r["loss"] for r in rows]
    assert all(x == x and x < 20 for x in losses)  # finite
    assert sum(losses[-3:]) < sum(losses[:3])  # it learns from the data
    drawn = {k.split("/", 1)[1]: sum(r.get(k, 0) for r in rows) for k in rows[0] if k.startswith("samples/")}
    assert set(drawn) == {"tb_code", "tb_code_interp", "tb_nl"}
    assert sum(drawn.values()) == steps * 16
    share = {k: v / (steps * 16) for k, v in drawn.items()}
    if aligned:  # one document per sample: the blend weights are the document shares 20/30/50
        assert share == pytest.approx({"tb_code": 0.2, "tb_code_interp": 0.3, "tb_nl": 0.5}, abs=0.02)
    assert (run_dir / "checkpoints" / "latest").exists() or any((run_dir / "checkpoints").iterdir())


def test_one_mixture_epoch_and_listed_checkpoint_steps(testbed, tmp_path):
    """train.epochs=1 runs exactly the steps `mixture` prints (the paper's length rule), on the paper's split
    (no held-out part), and checkpoint.save_steps adds checkpoints at the listed steps (keep_last 0 keeps all)."""
    from echo_megatron.config import load_config
    from echo_megatron.data.mixture import resolve_train_steps

    out, small = testbed
    run_dir = tmp_path / "run"
    args = [*small, *TINY, "data.document_aligned=false", "data.loss_on=all", "model.seq_length=96",
            "data.split=100,0,0", "train.steps=null", "train.epochs=1", "train.global_batch_size=16",
            "train.micro_batch_size=16", *[f"data.sources.{s}.multiplier=0.2" for s in ("tb_code", "tb_code_interp", "tb_nl")],
            "checkpoint.save_steps=[2,3]", "checkpoint.save_interval=0", "checkpoint.keep_last=0"]  # fmt: skip
    steps = resolve_train_steps(load_config(DEMO, args))
    assert 4 <= steps <= 20
    r = cli(["pretrain", DEMO, *args, f"run_dir={run_dir}", "logging.progress_bar=false",
             "logging.tensorboard=false"], timeout=600)  # fmt: skip
    assert f"train.epochs 1 = {steps} steps" in r.stdout
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows if x.get("phase") == "pretrain"] == list(range(1, steps + 1))
    saved = sorted(p.name for p in (run_dir / "checkpoints").glob("iter_*"))
    assert saved == [f"iter_{s:07d}" for s in (2, 3, steps)]
    ran = load_config(str(run_dir / "config.yaml"))  # the run's config records the resolved steps
    assert (ran.train.steps, ran.train.epochs) == (steps, None)
