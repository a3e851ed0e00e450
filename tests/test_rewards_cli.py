"""``echo-megatron score IN.jsonl --task ... [--out OUT.jsonl]``: one result line per input line, in order, even
for hostile lines; accuracy per format printed."""

from __future__ import annotations

import json

from echo_megatron.cli import main


def test_score_command_keeps_order_and_survives_hostile_lines(tmp_path, data_dir, capsys):
    gsm = [json.loads(line) for line in open(data_dir / "gsm8k" / "test.jsonl")][:5]
    good = [
        {"completion": r["answer"], "answer": r["answer"].rsplit("####", 1)[1].strip(), "id": i}
        for i, r in enumerate(gsm)
    ]
    lines = [json.dumps(r) for r in good]
    lines += [
        json.dumps(
            {"completion": "def simple_math_problem():\n    return 6 * 7", "answer": "42", "format": "mine"}
        ),
        json.dumps(
            {
                "completion": "def simple_math_problem():\n    import os\n    os.fork()\n    return 1",
                "answer": "1",
            }
        ),
        json.dumps(
            {"completion": "def simple_math_problem():\n    while True:\n        pass", "answer": "1"}
        ),
        "not json at all",
        json.dumps(["a", "list"]),
        json.dumps({"completion": "no answer field"}),
        "",
    ]
    src = tmp_path / "in.jsonl"
    src.write_bytes(("\n".join(lines) + "\n").encode() + b'{"completion": "\xff", "answer": "1"}\n')
    out = tmp_path / "out.jsonl"
    rc = main(["score", str(src), "--task", "gsm8k", "--out", str(out), "--timeout", "1"])
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(lines) + 1  # one result line per input line
    assert [r["id"] for r in rows[:5]] == list(range(5)) and all(r["correct"] for r in rows[:5])
    assert rows[5]["correct"] and rows[5]["format"] == "code" and rows[5]["input_format"] == "mine"
    assert [r["error"] for r in rows[6:8]] == ["forbidden", "timeout"]
    bad = rows[8:]
    assert all(r["error"] == "bad_input" and r["reward"] == 0.0 for r in bad)
    assert [r["detail"].split(": ", 1)[0] for r in bad] == [f"{src}:{n}" for n in range(9, 14)]
    assert "missing field 'answer'" in bad[2]["detail"] and "empty line" in bad[3]["detail"]
    assert "not UTF-8" in bad[4]["detail"]
    printed = capsys.readouterr()
    assert "accuracy" in printed.out and "code" in printed.out and "nl" in printed.out
    assert f"{src}:9: not JSON" in printed.err


def test_score_command_to_stdout_and_missing_file(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"completion": "\\boxed{\\frac{1}{2}}", "answer": "0.5"}) + "\n")
    assert main(["score", str(src), "--task", "math"]) == 0
    printed = capsys.readouterr()
    (row,) = [json.loads(line) for line in printed.out.splitlines()]
    assert row["correct"] and row["extracted"] == "\\frac{1}{2}"
    assert "accuracy 100.00%" in printed.err
    assert main(["score", str(tmp_path / "missing.jsonl"), "--task", "gsm8k"]) == 2
    assert "cannot read" in capsys.readouterr().err
