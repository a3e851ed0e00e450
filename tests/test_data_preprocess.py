"""Preprocess: .bin/.idx round trip, prompt-length sidecar, idempotence, rebuilds, workers-invariance (sharding,
resume after kill -9 and several tasks are in test_data_shards.py)."""

from __future__ import annotations

import json

import numpy as np
from echo_testing import data_root
from megatron.core.datasets.indexed_dataset import IndexedDataset
from test_data_common import REPO

from echo_megatron.config import load_config
from echo_megatron.data.preprocess import plan_sources, preprocess
from echo_megatron.data.sources import make_document
from echo_megatron.data.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer

SAMPLES = data_root() / "sft_samples"
OLMO = data_root() / "tokenizers" / "allenai_gpt-neox-olmo-dolma-v1_5.json"


def sample_cfg(idx, *overrides, tok=OLMO):
    return load_config(
        str(REPO / "recipes" / "paper" / "150m_tg+omi2.yaml"),
        [
            f"data.indexed_dir={idx}", f"data.tokenizer.path={tok}", "data.num_workers=2", "data.chunk_docs=64",
            "data.sources.finemath.multiplier=0", "data.sources.algebraic_stack.multiplier=0",
            f"data.sources.finemath.path={SAMPLES / 'openmathinstruct2_sample1000.jsonl'}",
            "data.sources.finemath.max_docs=50", "data.sources.finemath.type=omi2",
            f"data.sources.algebraic_stack.path={SAMPLES / 'openmathinstruct1_sample100.jsonl'}",
            "data.sources.algebraic_stack.type=omi1",
            f"data.sources.tinygsm.path={SAMPLES / 'tinygsm_style_gpt41_sample1000.jsonl'}",
            f"data.sources.omi2.path={SAMPLES / 'openmathinstruct2_sample1000.jsonl'}",
            *overrides,
        ],
    )  # fmt: skip


def documents(source, path, type_=None):
    overrides = [f"data.sources.{source}.path={path}"] + (
        [f"data.sources.{source}.type={type_}"] if type_ else []
    )
    (plan,) = plan_sources(load_config(None, overrides))
    docs = (make_document(plan.spec, row, source, where) for where, row in plan.records())
    return [d for d in docs if d is not None]


def files_under(root):
    """{relative path: mtime_ns} of every file under ``root``."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def test_round_trip_detokenizes_to_the_documents_with_prompt_lengths(tmp_path):
    cfg = sample_cfg(tmp_path)
    manifests, skipped = preprocess(cfg, log=lambda s: None)
    assert skipped == [] and [m["source"] for m in manifests] == [
        "algebraic_stack",
        "finemath",
        "tinygsm",
        "omi2",
    ]
    tok = load_tokenizer(cfg.data.tokenizer)
    for m, (source, file, type_) in zip(manifests[2:], [("tinygsm", "tinygsm_style_gpt41_sample1000", None),
                                                        ("omi2", "openmathinstruct2_sample1000", None)]):  # fmt: skip
        docs = documents(source, SAMPLES / f"{file}.jsonl", type_)
        prefix = str(
            tmp_path / source / "shard_00000"
        )  # one input file under data.shard_docs rows: one shard
        ds = IndexedDataset(prefix)
        plens = np.load(prefix + ".prompt_len.npy")
        assert len(ds) == len(docs) == m["docs"] == len(plens)
        assert m["tokens"] == int(ds.sequence_lengths.sum())
        assert m["tokenizer"]["hash"] == tok.hash and m["format_counts"] == {m["format"]: len(docs)}
        for i in range(len(docs)):
            ids = ds[i].tolist()
            assert ids[-1] == tok.eod and tok.eod not in ids[:-1]
            assert tok.decode(ids[:-1]) == docs[i].text
            assert tok.decode(ids[: plens[i]]) == docs[i].prompt
    assert manifests[1]["docs"] == 50  # max_docs
    assert manifests[0]["filtered_out"] == 100 - manifests[0]["docs"]  # OMI1 keeps correct solutions only


def test_idempotent_then_rebuilds_on_a_changed_tokenizer_or_input(tmp_path):
    cfg = sample_cfg(tmp_path / "idx", "data.sources.tinygsm.max_docs=100", "data.sources.omi2.max_docs=100")
    first, _ = preprocess(cfg, log=lambda s: None)
    stamp = files_under(tmp_path / "idx")
    log: list[str] = []
    again, _ = preprocess(cfg, log=log.append)
    assert again == first and len(log) == 4 and all("up to date" in line for line in log)
    assert stamp == files_under(tmp_path / "idx")  # nothing rewritten, not even a manifest
    # a different tokenizer rebuilds every source
    texts = [d.text for d in documents("omi2", SAMPLES / "openmathinstruct2_sample1000.jsonl")[:200]]
    small = save_tokenizer(train_tokenizer(texts, "bpe", 400), str(tmp_path / "small.json"))
    cfg2 = sample_cfg(tmp_path / "idx", "data.sources.tinygsm.max_docs=100", "data.sources.omi2.max_docs=100",
                      tok=small)  # fmt: skip
    log.clear()
    rebuilt, _ = preprocess(cfg2, log=log.append)
    assert not any("up to date" in line for line in log)
    assert {m["tokenizer"]["hash"] for m in rebuilt} == {load_tokenizer(cfg2.data.tokenizer).hash}
    assert all(m["dtype"] == "uint16" for m in rebuilt + first)  # megatron: uint16 below 65,500 ids
    # a changed input file rebuilds that source only
    copy = tmp_path / "omi2.jsonl"
    lines = (SAMPLES / "openmathinstruct2_sample1000.jsonl").read_text().splitlines()[:100]
    copy.write_text("\n".join(lines) + "\n")
    cfg3 = sample_cfg(tmp_path / "idx", "data.sources.tinygsm.max_docs=100", f"data.sources.omi2.path={copy}",
                      tok=small)  # fmt: skip
    log.clear()
    preprocess(cfg3, log=log.append)
    assert ["up to date" in line for line in log if not line.startswith("preprocess:")] == [
        True,
        True,
        True,
        False,
    ]


def test_output_is_the_same_with_one_or_two_workers(tmp_path):
    outs = []
    for workers in (1, 2):
        cfg = sample_cfg(tmp_path / f"w{workers}", f"data.num_workers={workers}", "data.chunk_docs=37")
        preprocess(cfg, log=lambda s: None)
        root = tmp_path / f"w{workers}"
        outs.append({f: (root / f).read_bytes() for f in files_under(root) if not f.endswith(".json")})
    assert outs[0] == outs[1] and len(outs[0]) == 12  # 4 sources x shard_00000.{bin,idx,prompt_len.npy}


def test_manifest_records_counts_and_input_identity(tmp_path):
    cfg = sample_cfg(tmp_path, "data.sources.tinygsm.max_docs=10", "data.sources.omi2.max_docs=10")
    preprocess(cfg, log=lambda s: None)
    m = json.loads((tmp_path / "tinygsm" / "manifest.json").read_text())
    assert m["docs"] == 10 and m["format_counts"] == {"code": 10} and m["source_revision"] == "local"
    assert m["input"].endswith("tinygsm_style_gpt41_sample1000.jsonl") and m["bad_records"]["count"] == 0
    assert m["num_shards"] == 1 and m["shards"][0]["docs"] == 10 and m["tokenizer"]["path"].endswith(".json")
    (entry,) = json.loads((tmp_path / "tinygsm" / "plan.json").read_text())["shards"]
    path = SAMPLES / "tinygsm_style_gpt41_sample1000.jsonl"
    assert entry["files"] == [str(path)] and entry["bytes"] == path.stat().st_size
    (ident,) = entry["inputs"]  # the input's identity: a changed size, mtime or sampled bytes makes it stale
    assert ident["size"] == path.stat().st_size and ident["mtime_ns"] == path.stat().st_mtime_ns
    assert len(ident["sample"]) == 32 and m["shards"][0]["inputs"] == [ident]


def test_chunk_writer_matches_megatron_per_document_builder(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from echo_megatron.data.preprocess import append_documents

    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 1000, rng.integers(1, 50)) for _ in range(300)]
    a = IndexedDatasetBuilder(str(tmp_path / "a.bin"), dtype=np.uint16)
    for d in docs:
        a.add_document(d, [len(d)])
    a.finalize(str(tmp_path / "a.idx"))
    b = IndexedDatasetBuilder(str(tmp_path / "b.bin"), dtype=np.uint16)
    for part in (docs[:100], docs[100:]):
        append_documents(b, np.concatenate(part), np.array([len(d) for d in part]))
    b.finalize(str(tmp_path / "b.idx"))
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"a{ext}").read_bytes() == (tmp_path / f"b{ext}").read_bytes()
