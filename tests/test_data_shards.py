"""Sharded, resumable, parallel preprocessing on a generated corpus (no shared data, a tokenizer trained here).

* ``kill -9`` of ``echo-megatron preprocess`` in the middle of a multi-shard source: its workers die with it, and
  a rerun builds only the missing shards (the finished ones keep their mtimes) into files byte-identical to an
  uninterrupted run;
* two ``--shard-index`` processes running at once write the same shards as one process, the last one merges;
* a single file is cut into ``data.shard_docs``-row shards, and the blend splits the source's weight over them;
* a missing shard is refused by name; a changed file redoes its shard only; ``--only``; the progress lines;
* the hub probe goes through ``HTTPS_PROXY``.
Cost: ~1 min on 2 busy cores (two CLI start-ups, the rest in-process).
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from echo_megatron.cli import main
from echo_megatron.config import ConfigError, load_config
from echo_megatron.data.mixture import plan_mixture, resolve_blend
from echo_megatron.data.preprocess import preprocess
from echo_megatron.data.shards import source_of_prefix

WORDS = "alpha beta gamma delta sum product twice half apples pears costs total each more less per".split()
N_FILES, ROWS_PER_FILE, SINGLE_ROWS = 10, 800, 1200


def doc(rng: np.random.Generator, i: int) -> dict:
    words = " ".join(rng.choice(WORDS, size=int(rng.integers(20, 60))))
    return {
        "question": f"Problem {i}: {words}?",
        "solution": f"{words} = {i % 997}. The answer is {i % 997}.",
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(root, tokenizer path, recipe text, reference output dir of one uninterrupted in-process run)."""
    from echo_megatron.data.tokenizer import save_tokenizer, train_tokenizer

    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    for j in range(N_FILES):
        rows = [doc(rng, j * ROWS_PER_FILE + i) for i in range(ROWS_PER_FILE)]
        (root / "many").mkdir(exist_ok=True)
        (root / "many" / f"part-{j:03d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    single = [doc(rng, 10**6 + i) for i in range(SINGLE_ROWS)]
    (root / "single.jsonl").write_text("".join(json.dumps(r) + "\n" for r in single))
    texts = [r["question"] + r["solution"] for r in single[:500]]
    tok = save_tokenizer(train_tokenizer(texts, "bpe", 320), str(root / "tok.json"))
    recipe = root / "recipe.yaml"
    recipe.write_text(
        "data:\n"
        f"  tokenizer: {{path: {tok}}}\n"
        "  shard_docs: 500\n  num_workers: 2\n  progress_interval: 0.2\n  split: '99,1,0'\n"
        "  sources:\n"
        f"    many: {{type: testbed, path: {root / 'many'}}}\n"
        f"    single: {{type: testbed, path: {root / 'single.jsonl'}}}\n"
    )
    preprocess(cfg_of(recipe, root / "ref"), log=lambda s: None, progress_out=io.StringIO())
    return root, recipe


def cfg_of(recipe: Path, out: Path, *extra: str):
    return load_config(str(recipe), [f"data.indexed_dir={out}", *extra])


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("shard_*"))
        if p.suffix in (".bin", ".idx", ".npy")
    }


def mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted(out.rglob("shard_*"))}


def cli_args(recipe: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "echo_megatron",
        "preprocess",
        str(recipe),
        f"data.indexed_dir={out}",
        *extra,
    ]


def test_reference_layout_and_counts(corpus):
    root, _ = corpus
    m = json.loads((root / "ref" / "many" / "manifest.json").read_text())
    assert m["num_shards"] == N_FILES and m["docs"] == N_FILES * ROWS_PER_FILE
    assert [s["files"] for s in m["shards"]] == [
        [str(root / "many" / f"part-{j:03d}.jsonl")] for j in range(N_FILES)
    ]
    single = json.loads((root / "ref" / "single" / "manifest.json").read_text())
    assert [s["rows"] for s in single["shards"]] == [[0, 500], [500, 1000], [1000, None]]
    assert [s["docs"] for s in single["shards"]] == [500, 500, 200]


def test_kill_9_then_rerun_builds_only_the_missing_shards_byte_identical(corpus, tmp_path):
    import psutil

    root, recipe = corpus
    out = tmp_path / "idx"
    proc = subprocess.Popen(cli_args(recipe, out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while (
        len(list(out.glob("many/shard_*.json"))) < 2 and proc.poll() is None and time.monotonic() < deadline
    ):
        time.sleep(0.02)
    workers = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read().decode()[-2000:]
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, "workers outlived the killed main process"
    finished = sorted(p.name.split(".")[0] for p in out.glob("many/shard_*.json"))
    assert 2 <= len(finished) < N_FILES
    complete = len(list(out.glob("*/shard_*.json")))  # a record is written last: these shards are whole
    before = {k: v for k, v in mtimes(out).items() if k.startswith("many/") and k[5:16] in finished}
    log: list[str] = []
    preprocess(cfg_of(recipe, out), log=log.append, progress_out=io.StringIO())
    assert log[0].startswith(f"preprocess: {N_FILES + 3 - complete} shards to build of {N_FILES + 3}")
    after = mtimes(out)
    assert {k: after[k] for k in before} == before  # the finished shards were not rewritten
    assert shard_bytes(out) == shard_bytes(root / "ref")
    assert not list(out.rglob("*.tmp-*"))  # the killed run's temporary files were cleaned up


def test_two_shard_index_processes_write_what_one_process_writes(corpus, tmp_path):
    root, recipe = corpus
    out = tmp_path / "idx"
    tasks = [
        subprocess.Popen(
            cli_args(recipe, out, "data.num_workers=1", "--shard-index", str(i), "--num-shards", "2"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    logs = [t.communicate(timeout=600)[0] for t in tasks]
    assert [t.returncode for t in tasks] == [0, 0], logs
    assert shard_bytes(out) == shard_bytes(root / "ref")
    for source in ("many", "single"):  # merged by whichever task finished last
        ref = json.loads((root / "ref" / source / "manifest.json").read_text())
        got = json.loads((out / source / "manifest.json").read_text())
        assert [(s["name"], s["docs"], s["tokens"]) for s in got["shards"]] == [
            (s["name"], s["docs"], s["tokens"]) for s in ref["shards"]
        ]
    # shards are dealt round-robin over all sources: each task built some of each kind
    assert all("shards to build of 13 (task" in log for log in logs)


def test_one_task_of_two_leaves_the_sources_incomplete_and_pretrain_refuses_by_name(corpus, tmp_path):
    _, recipe = corpus
    out = tmp_path / "idx"
    cfg = cfg_of(recipe, out)
    manifests, waiting = preprocess(
        cfg, shard_index=0, num_shards=2, log=lambda s: None, progress_out=io.StringIO()
    )
    assert manifests == [] and waiting == ["many", "single"]
    with pytest.raises(
        ConfigError, match=r"data\.sources\.many: 5 of 10 shards missing .*shard_00001, shard_00003"
    ):
        resolve_blend(cfg)
    assert main(["preprocess", str(recipe), f"data.indexed_dir={out}", "--merge"]) == 2
    preprocess(cfg, shard_index=1, num_shards=2, log=lambda s: None, progress_out=io.StringIO())
    assert len(resolve_blend(cfg)) == N_FILES + 3
    # a shard lost afterwards: merged again by the first pretrain, refused by name
    (out / "many" / "manifest.json").unlink()
    (out / "many" / "shard_00004.bin").unlink()
    with pytest.raises(ConfigError, match=r"1 of 10 shards missing in .*: shard_00004"):
        resolve_blend(cfg)


def test_blend_splits_each_source_weight_over_its_shards(corpus):
    root, recipe = corpus
    for aligned in ("true", "false"):
        cfg = cfg_of(recipe, root / "ref", f"data.document_aligned={aligned}", "model.seq_length=64",
                     "data.sources.single.multiplier=2")  # fmt: skip
        mix = plan_mixture(cfg)
        blend = mix.blend()
        for row in mix.rows:
            shares = [(p, w) for p, w in blend if source_of_prefix(p) == row.source]
            assert len(shares) == len(row.shards) == (N_FILES if row.source == "many" else 3)
            assert sum(w for _, w in shares) == pytest.approx(row.weight, rel=1e-12)
            assert [w / row.weight for _, w in shares] == pytest.approx(
                [pp / row.per_pass for _, pp in row.shards]
            )
        # w_i = m_i P_i / sum_j m_j P_j with P_i the sum of the shards' P_is
        P = {r.source: sum(pp for _, pp in r.shards) for r in mix.rows}
        E = P["many"] * 1 + P["single"] * 2
        assert [r.weight for r in mix.rows] == pytest.approx([P["many"] / E, 2 * P["single"] / E])


def test_changed_file_redoes_its_shard_only_and_only_picks_sources(corpus, tmp_path):
    root, recipe = corpus
    src = tmp_path / "many"
    src.mkdir()
    for j in range(3):
        (src / f"part-{j:03d}.jsonl").write_bytes((root / "many" / f"part-{j:03d}.jsonl").read_bytes())
    out = tmp_path / "idx"
    cfg = cfg_of(recipe, out, f"data.sources.many.path={src}", "data.num_workers=1")
    preprocess(cfg, only=["many"], log=lambda s: None, progress_out=io.StringIO())
    assert sorted(p.name for p in out.iterdir()) == ["many"]  # --only
    before = mtimes(out)
    text = (src / "part-001.jsonl").read_text().splitlines()
    (src / "part-001.jsonl").write_text("\n".join(text[:100]) + "\n")
    log: list[str] = []
    preprocess(cfg, only=["many"], log=log.append, progress_out=io.StringIO())
    after = mtimes(out)
    assert log[0].startswith("preprocess: 1 shards to build of 3")
    assert {k for k in before if before[k] != after.get(k)} == {
        f"many/shard_00001{ext}" for ext in (".bin", ".idx", ".prompt_len.npy", ".json")
    }
    assert json.loads((out / "many" / "manifest.json").read_text())["docs"] == 2 * ROWS_PER_FILE + 100
    (src / "part-002.jsonl").unlink()  # a file gone: its shard leaves the plan and the folder
    preprocess(cfg, only=["many"], log=lambda s: None, progress_out=io.StringIO())
    assert not list(out.glob("many/shard_00002*"))
    assert main(["preprocess", str(recipe), f"data.indexed_dir={out}", "--only", "nope"]) == 2


def test_progress_lines_without_a_terminal(corpus, tmp_path):
    _, recipe = corpus
    out = io.StringIO()
    cfg = cfg_of(recipe, tmp_path / "idx", "data.progress_interval=0", "data.num_workers=1")
    preprocess(cfg, only=["single"], log=lambda s: None, progress_out=out)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) >= 4
    last = [x for x in lines if "] single:" in x][-1]
    assert "1,200 docs" in last and "tokens/s" in last and "shards 3/3" in last and "ETA done" in last
    assert any("] all:" in x for x in lines)


def test_progress_bars_on_a_terminal(corpus, tmp_path):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    _, recipe = corpus
    out = Terminal()
    cfg = cfg_of(recipe, tmp_path / "idx", "data.num_workers=1")
    preprocess(cfg, only=["single"], log=lambda s: None, progress_out=out)
    text = out.getvalue()
    assert "\r" in text and "1,200 docs" in text and "shards 3/3" in text  # tqdm bars: all, single


def test_bad_line_in_a_zst_file_is_named_or_skipped(tmp_path, corpus):
    import zstandard

    root, _ = corpus
    good = json.dumps({"question": "q", "solution": "s"})
    data = (good + "\n") * 3 + '{"question": "q", \n' + good + "\n"
    (tmp_path / "d.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(data.encode()))
    over = [f"data.tokenizer.path={root / 'tok.json'}", f"data.indexed_dir={tmp_path / 'idx'}",
            "data.sources.tb.type=testbed", f"data.sources.tb.path={tmp_path / 'd.jsonl.zst'}"]  # fmt: skip
    with pytest.raises(ConfigError, match=r"d\.jsonl\.zst:4: malformed JSON line"):
        preprocess(load_config(None, over), log=lambda s: None)
    (m,), _ = preprocess(load_config(None, [*over, "data.on_bad_record=skip"]), log=lambda s: None)
    assert m["docs"] == 4 and m["bad_records"]["count"] == 1


def test_hub_probe_goes_through_https_proxy(monkeypatch):
    from echo_megatron.data.hub import hub_reachable

    seen: list[str] = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def proxy() -> None:
        conn, _ = server.accept()
        seen.append(conn.recv(4096).decode().splitlines()[0])
        conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        conn.close()

    thread = threading.Thread(target=proxy, daemon=True)
    thread.start()
    for var in ("NO_PROXY", "no_proxy", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example.invalid")
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{server.getsockname()[1]}")
    assert hub_reachable(timeout=5) is False  # the proxy refused the tunnel
    thread.join(5)
    server.close()
    assert len(seen) == 1 and seen[0].startswith("CONNECT hub.example.invalid:443 HTTP/")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_reachable(timeout=5) is False


def test_workers_option_minus_one_is_one_per_cpu():
    from echo_megatron.data.preprocess import workers_of

    assert workers_of(-1) == len(os.sched_getaffinity(0)) and workers_of(3) == 3
