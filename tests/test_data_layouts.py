"""Each real corpus layout, generated small, yields exactly the rows the registry means (and nothing beside them).

Trees mimic the hub repos: proof-pile-2 (``algebraic-stack/<split>/*.jsonl.zst`` next to ``arxiv/`` and
``open-web-math/``, plus the loading script datasets >= 4 refuses), OpenMathInstruct-2 (``data/train-*`` beside the
``train_1M/2M/5M`` subsets), OpenMathInstruct-1 (``correct_solutions/`` and ``incorrect_solutions/``), FineMath
(``finemath-3plus/`` beside ``finemath-4plus/``), a hub-cache snapshot (``datasets--org--name/snapshots/<sha>`` +
``refs/main``) read offline, and ``save_to_disk`` Arrow folders. Rows are read through the preprocess path
(SourcePlan -> inputs -> HF builders -> documents); one layout also goes through ``preprocess`` to the shards.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from echo_megatron.config import ConfigError, load_config
from echo_megatron.data.preprocess import documents_of_chunk, plan_sources

SHA = "0123456789abcdef0123456789abcdef01234567"


def write_jsonl(path: Path, rows: list[dict], compress: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    if compress == "zst":
        import zstandard

        data = zstandard.ZstdCompressor().compress(data)
    elif compress == "gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def cfg_for(tmp_path: Path, sources: dict[str, dict], *extra: str):
    """A config whose data.sources are ``sources`` (key -> {field: value})."""
    lines = [f"data.indexed_dir={tmp_path / 'idx'}"]
    for name, kv in sources.items():
        lines.append(f"data.sources.{name}.multiplier=1")
        for k, v in kv.items():
            lines.append(f"data.sources.{name}.{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}")
    return load_config(None, [*lines, *extra])


def texts(tmp_path: Path, name: str, **kv) -> list[str]:
    """The documents' texts of source ``name`` configured with ``kv``."""
    (plan,) = plan_sources(cfg_for(tmp_path, {name: kv}))
    docs, _, _ = documents_of_chunk(list(plan.records()), plan.spec, plan.name, "error")
    return [d.text for d in docs]


def plain(tag: str, n: int) -> list[dict]:
    return [{"text": f"{tag} {i}", "meta": {"i": i}} for i in range(n)]


# -- proof-pile-2 / Algebraic-Stack -----------------------------------------------------------------------
def proof_pile(root: Path) -> Path:
    for split, n_files in (("train", 3), ("validation", 1), ("test", 1)):
        for j in range(n_files):
            write_jsonl(
                root / "algebraic-stack" / split / f"{split}-{j:03d}.jsonl.zst",
                plain(f"as/{split}/{j}", 4),
                "zst",
            )
    for other in ("arxiv", "open-web-math"):
        write_jsonl(root / other / "train" / "train-000.jsonl.zst", plain(f"{other}/train", 4), "zst")
    (root / "proof-pile-2.py").write_text("raise RuntimeError('the loading script must never run')\n")
    (root / "README.md").write_text("# proof-pile-2\n")
    return root


def expected_as(*splits: str) -> list[str]:
    n = {"train": 3, "validation": 1, "test": 1}
    return [f"as/{s}/{j} {i}" for s in splits for j in range(n[s]) for i in range(4)]


def test_algebraic_stack_reads_its_zst_shards_only(tmp_path):
    root = proof_pile(tmp_path / "proof-pile-2")
    assert texts(tmp_path, "algebraic_stack", path=str(root)) == expected_as("train")
    # a copy of just the algebraic-stack folder, or of its train folder, reads the same rows
    assert texts(tmp_path, "algebraic_stack", path=str(root / "algebraic-stack")) == expected_as("train")
    assert texts(tmp_path, "algebraic_stack", path=str(root / "algebraic-stack" / "train")) == expected_as(
        "train"
    )
    assert texts(tmp_path, "algebraic_stack", path=str(root), split="train+validation") == expected_as(
        "train", "validation"
    )
    with pytest.raises(ConfigError, match=r"split: nope is not a split of algebraic_stack/algebraic-stack"):
        texts(tmp_path, "algebraic_stack", path=str(root), split="nope")


def hub_cache(tmp_path: Path, repo: str, build) -> Path:
    """``build(snapshot dir)`` inside a hub cache ``tmp_path/hub/datasets--org--name`` with refs/main."""
    repo_dir = tmp_path / "hub" / ("datasets--" + repo.replace("/", "--"))
    build(repo_dir / "snapshots" / SHA)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(SHA)
    return repo_dir


def test_hub_cache_snapshot_offline_by_hub_id_or_as_a_path(tmp_path, monkeypatch):
    repo_dir = hub_cache(tmp_path, "EleutherAI/proof-pile-2", proof_pile)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # the registry's hub id, found in the cache (what `huggingface-cli download` leaves on an offline cluster)
    assert texts(tmp_path, "algebraic_stack") == expected_as("train")
    # the cache folder given as hf_id (the case: it used to mix arXiv and OpenWebMath into train)
    assert texts(tmp_path, "algebraic_stack", hf_id=str(repo_dir)) == expected_as("train")
    (plan,) = plan_sources(
        cfg_for(tmp_path, {"algebraic_stack": {"path": str(repo_dir / "snapshots" / SHA)}})
    )
    inputs = plan.inputs()
    assert inputs.revision == f"hf:EleutherAI/proof-pile-2@{SHA}"
    assert inputs.files[0].identity == {
        "repo": "EleutherAI/proof-pile-2", "sha": SHA, "file": "algebraic-stack/train/train-000.jsonl.zst",
        "size": inputs.files[0].size,
    }  # fmt: skip
    # not in the cache, hub unreachable: an error that says what to download, never a skipped source
    with pytest.raises(
        ConfigError, match=r"not in the hub cache .*huggingface-cli download --repo-type dataset"
    ):
        texts(tmp_path, "finemath")


# -- OpenMathInstruct-2 ------------------------------------------------------------------------------------
def omi2_row(tag: str, i: int, source: str) -> dict:
    return {"problem": f"{tag} q{i}", "generated_solution": f"s{i} \\boxed{{{i}}}", "expected_answer": str(i),
            "problem_source": source}  # fmt: skip


def omi2_tree(root: Path) -> Path:
    sources = ["augmented_math", "augmented_gsm8k", "math", "gsm8k"]
    for j in range(2):
        rows = [omi2_row(f"train{j}", i, sources[i % 4]) for i in range(6)]
        write_parquet(root / "data" / f"train-0000{j}-of-00002.parquet", rows)
    for sub in ("1M", "2M", "5M"):  # subsets: re-samples of train rows (duplicates if read together)
        write_parquet(
            root / "data" / f"train_{sub}-00000-of-00001.parquet",
            [omi2_row("train0", i, "math") for i in range(3)],
        )
    return root


def test_omi2_default_is_the_full_train_split_without_the_subsets(tmp_path):
    root = omi2_tree(tmp_path / "OpenMathInstruct-2")
    full = [f"train{j} q{i}\n\ns{i} \\boxed{{{i}}}" for j in range(2) for i in range(6)]
    assert texts(tmp_path, "omi2", path=str(root)) == full
    assert texts(tmp_path, "omi2", path=str(root / "data")) == full  # a copy of data/ alone
    assert texts(tmp_path, "omi2", path=str(root), variant="train_1M") == [
        f"train0 q{i}\n\ns{i} \\boxed{{{i}}}" for i in range(3)
    ]
    # the whole data/ folder (what a local path used to read) holds the subsets' duplicates too
    assert len(texts(tmp_path, "omi2", path=str(root), data_files=["data/*.parquet"])) == len(full) + 9
    # a row filter on problem_source (e.g. the paper's choice of problem sources)
    kept = texts(tmp_path, "omi2", path=str(root), filters={"problem_source": ["augmented_math", "math"]})
    assert kept == [t for t in full if int(t.split(" q")[1].split("\n")[0]) % 2 == 0]
    with pytest.raises(ConfigError, match=r"variant: 'train_9M' is not a variant of 'omi2'"):
        texts(tmp_path, "omi2", path=str(root), variant="train_9M")


# -- OpenMathInstruct-1 ------------------------------------------------------------------------------------
def omi1_tree(root: Path) -> Path:
    for split in ("train", "validation"):
        for kind, ok in (("correct", True), ("incorrect", False)):
            rows = [{"question": f"{split} {kind} q{i}", "generated_solution": f"<llm-code>\n{i}\n</llm-code>",
                     "is_correct": ok} for i in range(3)]  # fmt: skip
            write_jsonl(root / f"{kind}_solutions" / f"{split}.jsonl", rows)
    return root


def test_omi1_hub_cache_and_local_copies_read_the_same_correct_rows(tmp_path, monkeypatch):
    root = omi1_tree(tmp_path / "OpenMathInstruct-1")
    want = [f"train correct q{i}\n\n<llm-code>\n{i}\n</llm-code>" for i in range(3)]
    assert texts(tmp_path, "omi1", path=str(root)) == want
    assert texts(tmp_path, "omi1", path=str(root / "correct_solutions")) == want
    both = texts(tmp_path, "omi1", path=str(root), split="train+validation")
    assert both == want + [w.replace("train", "validation") for w in want]
    hub_cache(tmp_path, "nvidia/OpenMathInstruct-1", omi1_tree)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert texts(tmp_path, "omi1") == want  # the hub (its cache) gives the very same rows
    assert texts(tmp_path, "omi1", split="train+validation") == both
    # a copy of incorrect_solutions/ is not mistaken for the correct ones
    with pytest.raises(ConfigError, match=r"no file matches 'correct_solutions/train.jsonl'"):
        texts(tmp_path, "omi1", path=str(root / "incorrect_solutions"))
    # data_files naming the incorrect ones: the correct-only filter leaves nothing
    assert texts(tmp_path, "omi1", path=str(root), data_files=["incorrect_solutions/train.jsonl"]) == []
    with pytest.raises(ConfigError, match=r"data_files names the files itself; drop split"):
        texts(tmp_path, "omi1", path=str(root), data_files=["correct_solutions/train.jsonl"], split="train")


def test_a_shard_without_documents_is_kept_out_of_the_blend(tmp_path):
    """OMI-1 read from both folders: the incorrect file's shard keeps no row, the mixture blends the other."""
    from echo_megatron.data.mixture import plan_mixture
    from echo_megatron.data.preprocess import preprocess
    from echo_megatron.data.tokenizer import save_tokenizer, train_tokenizer

    root = omi1_tree(tmp_path / "OpenMathInstruct-1")
    tok = save_tokenizer(
        train_tokenizer(["train correct q1 llm-code"] * 20, "bpe", 300), str(tmp_path / "tok.json")
    )
    files = ["correct_solutions/train.jsonl", "incorrect_solutions/train.jsonl"]
    cfg = cfg_for(tmp_path, {"omi1": {"path": str(root), "data_files": files}}, f"data.tokenizer.path={tok}",
                  "data.document_aligned=true", "data.split=1,0,0", "data.num_workers=1")  # fmt: skip
    (m,), _ = preprocess(cfg, log=lambda s: None)
    assert [s["docs"] for s in m["shards"]] == [3, 0] and m["filtered_out"] == 3
    (row,) = plan_mixture(cfg).rows
    assert row.shards == [
        (str(tmp_path / "idx" / "omi1" / "shard_00000"), 3),
        (str(tmp_path / "idx" / "omi1" / "shard_00001"), 0),
    ]
    assert plan_mixture(cfg).blend() == [(str(tmp_path / "idx" / "omi1" / "shard_00000"), 1.0)]


# -- FineMath, Arrow, compressed and mixed local files -------------------------------------------------------
def test_finemath_3plus_parquet_shards(tmp_path):
    root = tmp_path / "finemath"
    for j in range(3):
        write_parquet(root / "finemath-3plus" / f"train-0000{j}-of-00003.parquet", plain(f"fm3/{j}", 5))
    write_parquet(root / "finemath-4plus" / "train-00000-of-00001.parquet", plain("fm4", 5))
    want = [f"fm3/{j} {i}" for j in range(3) for i in range(5)]
    assert texts(tmp_path, "finemath", path=str(root)) == want
    assert texts(tmp_path, "finemath", path=str(root), variant="4plus") == [f"fm4 {i}" for i in range(5)]
    (plan,) = plan_sources(cfg_for(tmp_path, {"finemath": {"path": str(root)}}))
    assert [os.path.basename(f.path) for f in plan.inputs().files] == [
        f"train-0000{j}-of-00003.parquet" for j in range(3)
    ]


def test_arrow_save_to_disk_dataset_and_dataset_dict(tmp_path):
    import datasets

    rows = [{"question": f"q{i}", "solution": f"s{i}"} for i in range(10)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"), num_shards=3)
    assert texts(tmp_path, "tb", type="testbed", path=str(tmp_path / "ds")) == [
        f"q{i}\n\ns{i}" for i in range(10)
    ]
    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows[:6]), "test": datasets.Dataset.from_list(rows[6:])}
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    assert texts(tmp_path, "tb", type="testbed", path=str(tmp_path / "dd")) == [
        f"q{i}\n\ns{i}" for i in range(6)
    ]
    assert texts(tmp_path, "tb", type="testbed", path=str(tmp_path / "dd"), split="test") == [
        f"q{i}\n\ns{i}" for i in range(6, 10)
    ]


def test_compressed_json_and_data_files_globs(tmp_path):
    rows = [{"question": f"q{i}", "solution": f"s{i}", "answer": i} for i in range(4)]
    write_jsonl(tmp_path / "d" / "a.jsonl.gz", rows, "gz")
    write_jsonl(tmp_path / "d" / "b.jsonl.zst", rows, "zst")
    (tmp_path / "d" / "c.json").write_text(json.dumps(rows))
    write_parquet(tmp_path / "d" / "sub" / "d.parquet", rows)
    one = [f"q{i}\n\ns{i}" for i in range(4)]
    assert texts(tmp_path, "tb", type="testbed", path=str(tmp_path / "d")) == one * 4
    assert (
        texts(tmp_path, "tb", type="testbed", path=str(tmp_path / "d"), data_files=["*.jsonl.*"]) == one * 2
    )
    assert (
        texts(tmp_path, "tb", type="testbed", data_files=[str(tmp_path / "d" / "sub" / "*.parquet")]) == one
    )
    # field overrides: another schema read as question/solution
    write_jsonl(tmp_path / "e.jsonl", [{"prompt": "p", "response": "r"}])
    assert texts(tmp_path, "tb", type="testbed", path=str(tmp_path / "e.jsonl"), question_field="prompt",
                 solution_field="response") == ["p\n\nr"]  # fmt: skip
