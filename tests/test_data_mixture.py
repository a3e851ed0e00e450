"""The data loop: testbed -> tokenizer -> preprocess -> mixture -> resolve_blend -> megatron blended datasets.

Checks that the multipliers compile to weights whose sampled proportions match within 1% over 10k samples (with
megatron's GPTDataset and with DocumentAlignedDataset), that N x means N passes in a one-epoch run, and that
document-aligned rows start at position 0 with the prompt masked out of the loss.
"""

from __future__ import annotations

import numpy as np
import pytest
from echo_testing import data_root, writable
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDataset
from test_data_common import DEMO, REPO, SMALL, prepared  # noqa: F401  (prepared is a fixture)

from echo_megatron.cli import main
from echo_megatron.config import ConfigError, load_config
from echo_megatron.data.aligned import (
    AlignedDatasetConfig,
    DocumentAlignedDataset,
    prompt_loss_mask,
    sample_order,
)
from echo_megatron.data.mixture import (
    blend_weights,
    format_table,
    plan_mixture,
    resolve_blend,
    resolve_train_steps,
)
from echo_megatron.data.shards import read_manifest, shard_prefixes, source_of_prefix
from echo_megatron.data.sources import detect_format
from echo_megatron.data.tokenizer import load_tokenizer

MULTS = {"tb_code": 1.0, "tb_code_interp": 2.0, "tb_nl": 0.5}
FORMAT = {"tb_code": "code", "tb_code_interp": "code_interp", "tb_nl": "nl"}


def with_mults(cfg, aligned: bool, steps: int = 625, gbs: int = 16):
    cfg = writable(cfg)
    for name, m in MULTS.items():
        cfg.data.sources[name].multiplier = m
    cfg.data.document_aligned = aligned
    cfg.data.loss_on = "solution" if aligned else "all"
    cfg.train.steps, cfg.train.global_batch_size = steps, gbs
    return cfg


def build(cfg, cache, cls, config_cls, **extra):
    blend = resolve_blend(cfg)
    tok = load_tokenizer(cfg.data.tokenizer)
    config = config_cls(
        random_seed=cfg.data.seed, sequence_length=cfg.model.seq_length, split=cfg.data.split, tokenizer=tok,
        blend=([p for p, _ in blend], [w for _, w in blend]), path_to_cache=None,  # no process group here
        reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False, create_attention_mask=False,
        **extra,
    )  # fmt: skip
    size = cfg.train.steps * cfg.train.global_batch_size
    train, _, _ = BlendedMegatronDatasetBuilder(cls, [size, 0, 0], lambda: True, config).build()
    return blend, train, tok


def expected_weights(cfg) -> list[float]:
    """w_i = m_i P_i / sum_j m_j P_j, computed here from the raw index files."""
    per_pass = []
    for name in MULTS:
        index = IndexedDataset(f"{cfg.data.indexed_dir}/{name}/shard_00000")  # one shard per testbed file
        lengths = np.array(index.sequence_lengths)
        end = int(round(0.99 * len(lengths)))  # data.split 99,1,0
        L = cfg.model.seq_length
        per_pass.append(end if cfg.data.document_aligned else (int(lengths[:end].sum()) - 1) // L)
    total = sum(m * p for m, p in zip(MULTS.values(), per_pass))
    return [m * p / total for m, p in zip(MULTS.values(), per_pass)]


@pytest.mark.parametrize("aligned", [False, True], ids=["packed-GPTDataset", "DocumentAlignedDataset"])
def test_sampled_proportions_match_the_weights_within_1pct(prepared, tmp_path, aligned):  # noqa: F811
    cfg, _ = prepared
    cfg = with_mults(cfg, aligned)
    cls, config_cls = (
        (DocumentAlignedDataset, AlignedDatasetConfig) if aligned else (GPTDataset, GPTDatasetConfig)
    )
    extra = {"loss_on": "solution"} if aligned else {}
    blend, train, tok = build(cfg, tmp_path, cls, config_cls, **extra)
    weights = [w for _, w in blend]
    assert [source_of_prefix(p) for p, _ in blend] == list(MULTS)
    assert np.allclose(weights, expected_weights(cfg), atol=1e-12)
    n = 10_000
    ids = np.array([int(train[i]["dataset_id"]) for i in range(n)])
    share = np.bincount(ids, minlength=3) / n
    assert np.all(np.abs(share - np.array(weights)) < 0.01), (share, weights)
    if aligned:  # every sampled row is one document of its source's format, from position 0
        for i in range(0, n, 97):
            item = train[i]
            text = tok.decode(item["tokens"][item["loss_mask"].numpy() > 0].tolist()[:1])
            solution = tok.decode(
                [t for t, m in zip(item["labels"].tolist(), item["loss_mask"].tolist()) if m]
            )
            name = list(MULTS)[int(item["dataset_id"])]
            assert detect_format(solution, "nl") == FORMAT[name], solution
            assert text and item["position_ids"][0] == 0


def test_multiplier_n_is_n_passes_in_a_one_epoch_run(prepared, tmp_path):  # noqa: F811
    cfg, _ = prepared
    mix = plan_mixture(with_mults(cfg, aligned=True))
    one_epoch = with_mults(cfg, aligned=True, steps=mix.steps_per_epoch)
    mix = plan_mixture(one_epoch)
    for row in mix.rows:
        assert row.passes == pytest.approx(MULTS[row.source], rel=0.01)
    _, train, _ = build(one_epoch, tmp_path, DocumentAlignedDataset, AlignedDatasetConfig, loss_on="solution")
    for d, (name, mult) in enumerate(MULTS.items()):
        picked = train.dataset_sample_index[train.dataset_index == d]
        docs = train.datasets[d].order[picked]
        counts = np.bincount(docs, minlength=len(train.datasets[d].dataset))[train.datasets[d].indices]
        if mult >= 1:  # every train document seen exactly `mult` times (up to the last partial batch)
            assert np.mean(counts == mult) > 0.99, (name, np.bincount(counts))
        else:  # half of the documents once, none twice
            assert counts.max() == 1 and np.mean(counts) == pytest.approx(mult, abs=0.01)


def test_train_epochs_is_the_floor_of_the_repeat_expanded_mixture(prepared):  # noqa: F811
    """train.epochs R -> floor(R * E / B) steps, E = sum_i m_i P_i counted from the index files (the paper's
    max_steps = floor(sum_files floor(tokens / 2048) / 512) with repeats counted as copies)."""
    cfg, out = prepared
    cfg = with_mults(cfg, aligned=False)  # packed rows: P_i = (train tokens - 1) // L
    cfg.train.steps, cfg.train.epochs = None, 1.0
    per_pass = []  # P_i = sum over the source's shards of (train tokens - 1) // L, each shard split on its own
    for name in MULTS:
        directory = f"{cfg.data.indexed_dir}/{name}"
        p_i = 0
        for prefix in shard_prefixes(directory, read_manifest(directory)):
            index = IndexedDataset(prefix)  # held while its lengths are copied out
            lengths = np.array(index.sequence_lengths)
            p_i += (int(lengths[: int(round(0.99 * len(lengths)))].sum()) - 1) // cfg.model.seq_length
        per_pass.append(p_i)
    epoch = int(np.ceil(sum(m * p for m, p in zip(MULTS.values(), per_pass))))
    mix = plan_mixture(cfg)
    assert mix.epoch_samples == epoch and mix.epochs == 1.0
    assert mix.run_steps == resolve_train_steps(cfg) == mix.steps_per_epoch == epoch // 16
    for row in mix.rows:  # one epoch: passes = multipliers, short of the last partial batch
        assert row.passes == pytest.approx(MULTS[row.source], rel=16 / epoch)
    cfg.train.epochs = 2.5
    assert resolve_train_steps(cfg) == int(2.5 * epoch // 16)
    weighted = writable(cfg)
    for name in MULTS:
        weighted.data.sources[name].weight = 1.0
    with pytest.raises(ConfigError, match="train.epochs: a mixture epoch needs multipliers"):
        plan_mixture(weighted)
    tiny = writable(cfg)
    tiny.train.epochs = 1e-6
    with pytest.raises(ConfigError, match="less than one global batch"):
        resolve_train_steps(tiny)
    with pytest.raises(ConfigError, match=r"train.steps \(5\) and train.epochs \(1.0\) are both set"):
        load_config(DEMO, [f"testbed.out={out}", "train.steps=5", "train.epochs=1"])
    with pytest.raises(ConfigError, match="train.epochs must be > 0"):
        load_config(DEMO, [f"testbed.out={out}", "train.steps=null", "train.epochs=0"])


def test_mixture_command_prints_the_table(prepared, capsys):  # noqa: F811
    cfg, out = prepared
    assert (
        main(["mixture", DEMO, f"testbed.out={out}", *SMALL, "data.sources.tb_code_interp.multiplier=2"]) == 0
    )
    text = capsys.readouterr().out
    for name in MULTS:
        assert name in text
    assert "2x" in text and "one mixture epoch" in text and "tokens%" in text
    assert main(["mixture", DEMO, f"testbed.out={out}", *SMALL, "train.steps=null", "train.epochs=1"]) == 0
    steps = plan_mixture(cfg).steps_per_epoch
    assert f"run: train.epochs 1 = train.steps {steps:,} x global_batch_size 16" in capsys.readouterr().out
    mix = plan_mixture(cfg)
    assert format_table(mix).splitlines()[2].split()[:2] == ["tb_code", "code"]
    assert sum(r.share for r in mix.rows) == pytest.approx(1.0)


def test_explicit_weights_and_errors(prepared, tmp_path):  # noqa: F811
    cfg, out = prepared
    w = writable(cfg)
    for name, v in zip(MULTS, (1.0, 1.0, 2.0)):
        w.data.sources[name].weight = v
    assert [x for _, x in resolve_blend(w)] == [0.25, 0.25, 0.5]
    w.data.sources.tb_nl.weight = None
    with pytest.raises(ConfigError, match="give a weight for every source or none"):
        resolve_blend(w)
    missing = writable(cfg)
    missing.data.indexed_dir = str(tmp_path / "empty")
    with pytest.raises(ConfigError, match=r"not preprocessed .* run `echo-megatron preprocess RECIPE`"):
        resolve_blend(missing)
    unknown = load_config(DEMO, [f"testbed.out={out}", *SMALL, "data.sources.wikipedia.multiplier=1"])
    with pytest.raises(ConfigError, match="unknown source type 'wikipedia'"):
        resolve_blend(unknown)
    other_tok = writable(cfg)
    other_tok.data.tokenizer.path = str(data_root() / "tokenizers" / "gpt2" / "gpt2_tokenizer.json")
    with pytest.raises(ConfigError, match="preprocessed with another tokenizer"):
        resolve_blend(other_tok)
    with pytest.raises(ConfigError, match="mixture is empty"):
        blend_weights([0, 10], [1.0, 0.0])


def test_aligned_rows_mask_prompt_and_padding():
    mask = prompt_loss_mask(length=6, prompt_len=3, seq_length=8, loss_on="solution")
    # labels 0..4 are real (6 tokens -> 5 targets); labels 0, 1 are prompt tokens 1, 2
    assert mask.tolist() == [0, 0, 1, 1, 1, 0, 0, 0]
    assert prompt_loss_mask(6, 3, 8, "all").tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    assert prompt_loss_mask(20, 3, 8, "solution").tolist() == [0, 0, 1, 1, 1, 1, 1, 1]  # truncated doc
    order = sample_order(np.arange(5, 10), 12, seed=3)
    assert len(order) == 15 and sorted(order[:5]) == sorted(order[5:10]) == list(range(5, 10))
    assert np.array_equal(order, sample_order(np.arange(5, 10), 12, seed=3))


def test_aligned_item_is_the_document_from_position_zero(prepared, tmp_path):  # noqa: F811
    cfg, _ = prepared
    cfg = with_mults(cfg, aligned=True, steps=10)
    _, train, tok = build(cfg, tmp_path, DocumentAlignedDataset, AlignedDatasetConfig, loss_on="solution")
    ds = train.datasets[0]
    plens = np.load(f"{cfg.data.indexed_dir}/tb_code/shard_00000.prompt_len.npy")
    L = cfg.model.seq_length
    whole = cut = 0
    for i in range(40):
        item, doc = ds[i], int(ds.order[i])
        full = ds.dataset[doc].tolist()
        ids = full[: L + 1]  # a document longer than L + 1 tokens is cut
        n = len(ids)
        assert item["tokens"][: n - 1].tolist() == ids[:-1] and item["labels"][: n - 1].tolist() == ids[1:]
        if n == len(full):
            whole += 1
            assert item["labels"][n - 2] == tok.eod
        else:
            cut += 1
        m = item["loss_mask"].tolist()
        assert m == [0.0] * (plens[doc] - 1) + [1.0] * (n - plens[doc]) + [0.0] * (L - n + 1)
        assert tok.decode(full[: plens[doc]]).endswith("\n\n")
    assert whole > 20  # most documents fit; the cut ones are checked above too
    assert ds[None]["loss_mask"].sum() == 0
