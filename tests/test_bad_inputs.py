"""The bad-input table: every CLI input gets a one-line error (exit 2) or a per-line error record, never a traceback,
and ``score --out`` is never truncated or emptied. Also ``config`` with a list for ``model`` / ``model.preset`` and
sbatch scripts rendered from hostile cluster values."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from echo_testing import REPO

from echo_megatron.cli import main
from echo_megatron.commands import score as score_cmd

GOOD = {"completion": "def simple_math_problem():\n    return 6 * 7", "answer": "42"}
NUMERIC_GOLDS = [  # (answer as JSON, a completion that is right, one that is wrong)
    (b"42", "\\boxed{42}", "\\boxed{43}"),
    (b"27.0", "\\boxed{27}", "\\boxed{27.5}"),
    (b"0.5", "\\boxed{1/2}", "\\boxed{0.6}"),
]
OLD_OUT = '{"old": "results"}\n'


def _no_constant(name):
    raise ValueError(f"{name} written back")


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["score", *argv])
    printed = capsys.readouterr()
    return rc, printed.out, printed.err


@pytest.fixture
def files(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(GOOD) + "\n")
    out = tmp_path / "out.jsonl"
    out.write_text(OLD_OUT)
    return src, out


ARG_ERRORS = [
    (["--timeout", "nan"], "--timeout 'nan': not a finite number"),
    (["--timeout", "inf"], "--timeout 'inf': not a finite number"),
    (["--timeout", "-1"], "timeout_s must be in (0, 3600]"),
    (["--timeout", "0"], "timeout_s must be in (0, 3600]"),
    (["--timeout", "1e9"], "timeout_s must be in (0, 3600]"),
    (["--timeout", "abc"], "--timeout 'abc': not a finite number"),
    (["--workers", "0"], "workers must be in [1, 256]"),
    (["--workers", "100000"], "workers must be in [1, 256]"),
    (["--workers", "2.5"], "--workers '2.5': not a finite integer"),
    (["--batch", "0"], "--batch '0': must be in [1, 100000]"),
    (["--batch", "x"], "--batch 'x': not a finite integer"),
    (["--no-seccomp"], "the sandbox is not safe here (no seccomp allow list)"),
    (["--no-namespaces"], "the sandbox is not safe here (no PID namespace"),
]


@pytest.mark.parametrize("extra, message", ARG_ERRORS, ids=[" ".join(a) for a, _ in ARG_ERRORS])
def test_bad_arguments_are_one_line_and_leave_out_alone(files, capsys, extra, message):
    src, out = files
    rc, stdout, err = _run(capsys, str(src), "--task", "gsm8k", "--out", str(out), *extra)
    assert rc == 2 and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert out.read_text() == OLD_OUT  # never truncated
    assert sorted(os.listdir(out.parent)) == ["in.jsonl", "out.jsonl"]  # no temporary file left


def test_bad_paths_are_one_line(tmp_path, files, capsys):
    src, out = files
    cases = [
        ([str(tmp_path / "missing.jsonl"), "--task", "gsm8k"], "cannot read"),
        ([str(tmp_path), "--task", "gsm8k"], "cannot read"),  # a folder as input
        ([str(src), "--task", "gsm8k", "--out", str(tmp_path)], "is a folder"),
        ([str(src), "--task", "gsm8k", "--out", str(tmp_path / "no" / "such" / "o.jsonl")], "no folder"),
    ]
    for argv, message in cases:
        rc, _, err = _run(capsys, *argv)
        assert rc == 2 and message in err and err.count("\n") == 1, (argv, err)
    assert out.read_text() == OLD_OUT


def test_an_unknown_task_is_an_argparse_error(files, capsys):
    src, _ = files
    with pytest.raises(SystemExit) as e:
        main(["score", str(src), "--task", "nope"])
    assert e.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err


LINE_ERRORS = [
    (b"\xff\xfe not utf-8", "not UTF-8"),
    (b"not json at all", "not JSON"),
    (b"", "empty line"),
    (b"   ", "empty line"),
    (b'["a", "list"]', "an array, not a JSON object"),
    (b'"a string"', "a string, not a JSON object"),
    (b"42", "a number, not a JSON object"),
    (b"null", "null, not a JSON object"),
    (b'{"answer": "1"}', "missing field 'completion'"),
    (b'{"completion": "x"}', "missing field 'answer'"),
    (b'{"completion": 42, "answer": "42"}', "field 'completion' is a number, not a string"),
    (b'{"completion": "x", "answer": null}', "field 'answer' is null, not a string or a number"),
    (b'{"completion": ["x"], "answer": "1"}', "field 'completion' is an array, not a string"),
    (b'{"completion": "x", "answer": {"v": 1}}', "field 'answer' is an object, not a string or a number"),
    (b'{"completion": "x", "answer": true}', "field 'answer' is a boolean, not a string or a number"),
    (b'{"completion": "x", "answer": "1", "score": NaN}', "NaN is not valid JSON"),
    (b'{"completion": "x", "answer": "1", "score": Infinity}', "Infinity is not valid JSON"),
    (b'{"completion": "x", "answer": "1", "score": -Infinity}', "-Infinity is not valid JSON"),
    (b'{"completion": "x", "answer": "1", "score": 1e999}', "out of range"),
    (b'{"completion": "x", "answer": "1", "n": ' + b"9" * 5000 + b"}", "not JSON"),
    (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
    (
        b'{"completion": "x", "answer": "1", "deep": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
        "nested too deeply",
    ),
    (b'{"completion": "' + b"x" * 1_100_000 + b'", "answer": "1"}', "line longer than 1000000 bytes"),
    (b'{"completion": "x", "answer": "1"', "not JSON"),  # truncated
]


def test_bad_lines_get_error_records_with_their_line_numbers(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(score_cmd, "MAX_LINE_BYTES", 1_000_000)
    lines = [json.dumps(GOOD).encode()]
    for raw, _ in LINE_ERRORS:
        lines += [raw, json.dumps(GOOD).encode()]  # a good line after each bad one still scores 1
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out.jsonl"
    out.write_text(OLD_OUT)
    rc, stdout, err = _run(capsys, str(src), "--task", "gsm8k", "--out", str(out), "--timeout", "5")
    assert rc == 0 and "Traceback" not in err
    rows = [json.loads(line, parse_constant=_no_constant) for line in out.read_text().splitlines()]
    assert len(rows) == len(lines)  # one result line per input line, in order
    good = rows[0::2]
    assert all(r["reward"] == 1.0 and r["correct"] and r["error"] is None for r in good)
    for k, (raw, message) in enumerate(LINE_ERRORS):
        row, lineno = rows[2 * k + 1], 2 * k + 2
        assert row["error"] == "bad_input" and row["reward"] == 0.0, (raw[:40], row)
        assert row["detail"].startswith(f"{src}:{lineno}: ") and message in row["detail"], (raw[:40], row)
        assert f"{src}:{lineno}: " in err
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl", "out.jsonl"]
    assert f"bad input {len(LINE_ERRORS):>7}" in stdout


@pytest.mark.parametrize(
    "yaml_text, override, message",
    [
        ("model: [1, 2]\n", None, "'model' must be a mapping of model keys, not ListConfig"),
        ("model:\n  preset: [a, b]\n", None, "'model.preset' must be a preset name, not ListConfig"),
        ("model:\n  preset: {a: 1}\n", None, "'model.preset' must be a preset name, not DictConfig"),
        (None, "model=[1,2]", "command line: 'model' must be a mapping"),
        (None, "model.preset=[1,2]", "command line: 'model.preset' must be a preset name"),
        (None, "model=5", "command line: 'model' must be a mapping of model keys, not int"),
    ],
)
def test_config_with_a_list_for_model_is_a_config_error(tmp_path, capsys, yaml_text, override, message):
    recipe = str(tmp_path / "r.yaml")
    with open(recipe, "w") as f:
        f.write(yaml_text or "name: x\n")
    rc = main(["config", recipe, *([override] if override else [])])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1, err


# --- sbatch scripts from hostile values --------------------------------------------------------------------
TINY = os.path.join(REPO, "recipes", "tiny_cpu.yaml")
LAYOUT = ["cluster.nodes=1", "cluster.gpus_per_node=2", "train.global_batch_size=16"]
HOSTILE = [
    ("cluster", "partition", "gpu\ntouch /tmp/pwned", "control characters"),
    ("cluster", "partition", "gpu;touch /tmp/pwned", "a Slurm name list"),
    ("cluster", "partition", "gpu --wrap=id", "a Slurm name list"),
    ("cluster", "account", "proj\r\nid", "control characters"),
    ("cluster", "account", "$(id)", "a Slurm name list"),
    ("cluster", "time", "04:00:00\ntouch /tmp/pwned", "control characters"),
    ("cluster", "time", "4:00:00 --wrap=id", "a Slurm --time value"),
    ("cluster", "time", "`id`", "a Slurm --time value"),
    ("cluster", "mem", "0\ntouch /tmp/pwned", "control characters"),
    ("cluster", "mem", "64G --wrap", "a Slurm --mem value"),
    ("cluster", "mem", "lots", "a Slurm --mem value"),
    ("cluster", "python", "python\necho pwned", "control characters"),
    ("cluster", "container", "img\nid", "control characters"),
    ("cluster", "sbatch_args", ["--qos=high\nid"], "control characters"),
    ("cluster", "sbatch_args", ["qos=high"], "an sbatch option"),
    ("cluster", "setup", ["module load cuda\ntouch /tmp/pwned"], "control characters"),
    ("cluster", "env", {"FOO": "a\nb"}, "control characters"),
    ("cluster", "container_mounts", "/a:/a\n/b", "control characters"),
    (None, "run_dir", "/tmp/runs\ntouch /tmp/pwned", "control characters"),
    (None, "run_dir", "/tmp/my runs", "a path without spaces"),
    (None, "run_dir", "/tmp/run%j", "a path without spaces"),
    (None, "run_dir", "/tmp/it's", "a path without spaces"),
]


@pytest.mark.parametrize(
    "section, key, value, message", HOSTILE, ids=[f"{k}={v!r}" for _, k, v, _ in HOSTILE]
)
def test_hostile_values_never_reach_an_sbatch_script(tmp_path, section, key, value, message):
    from echo_megatron.cluster.submit import prepare
    from echo_megatron.config import ConfigError

    layer = {section: {key: value}} if section else {key: value}
    recipe = tmp_path / "hostile.yaml"
    recipe.write_text(yaml.safe_dump({"base": TINY, **layer}))
    with pytest.raises(ConfigError, match=message) as err:
        prepare(str(recipe), [], "pretrain", LAYOUT)
    assert "\n" not in str(err.value)


def test_valid_slurm_values_render(tmp_path):
    from echo_megatron.cluster.submit import prepare

    cluster = {"partition": "gpu,gpu-long", "mem": "512G", "account": "a.b", "sbatch_args": ["--qos=high"]}
    for time in ("30", "30:00", "1-0", "2-12:00:00", "UNLIMITED"):
        recipe = tmp_path / "ok.yaml"
        recipe.write_text(yaml.safe_dump({"base": TINY, "cluster": {**cluster, "time": time}}))
        (rendered,) = prepare(str(recipe), [], "pretrain", LAYOUT)[2]
        for line in (
            f"--time={time}",
            "--partition=gpu,gpu-long",
            "--mem=512G",
            "--account=a.b",
            "--qos=high",
        ):
            assert f"#SBATCH {line}\n" in rendered.script


def test_numeric_answers_are_compared_as_numbers(tmp_path, capsys):
    """AIME / AMC golds arrive as JSON numbers: compared as the number, not refused and not mangled."""
    lines = []
    for gold, right, wrong in NUMERIC_GOLDS:
        for completion in (right, wrong):
            lines.append(b'{"completion": ' + json.dumps(completion).encode() + b', "answer": ' + gold + b"}")
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    rc, _, err = _run(capsys, str(src), "--task", "amc", "--out", str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rc == 0 and [r["correct"] for r in rows] == [True, False] * len(NUMERIC_GOLDS), (rows, err)
    assert [r["answer"] for r in rows[::2]] == [
        json.loads(g) for g, _, _ in NUMERIC_GOLDS
    ]  # carried as given
