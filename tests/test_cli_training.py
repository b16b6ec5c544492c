"""The commands of cli/training.py (data, train, estimate, translate, evaluate): output and exit statuses."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from mt_tune.cli import app, main

runner = CliRunner()


def run_main(args: list[str], capsys) -> tuple[int, str, str]:
    """Run through main(), which maps bad input to exit 2 with a one-line message."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "c.jsonl"
    lines = [json.dumps({"zh": f"第{i}个句子。", "en": f"Sentence number {i}."}, ensure_ascii=False) for i in range(300)]
    path.write_text("\n".join(lines + ["{broken", lines[3]]) + "\n", encoding="utf-8")
    return path


def test_check_prints_the_report(corpus):
    result = runner.invoke(app, ["data", "check", str(corpus)])
    assert result.exit_code == 0, result.output
    assert "pairs kept             300" in result.output
    assert "skipped invalid_json        1  not a JSON object; first lines: 301" in result.output
    assert "skipped duplicate           1  exact duplicate of an earlier pair; first lines: 302" in result.output


def test_check_json(corpus):
    result = runner.invoke(app, ["data", "check", str(corpus), "--json"])
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["train"]["lines"] == 302 and report["train"]["kept"] == 300
    assert report["train"]["skipped"]["invalid_json"]["first_lines"] == [301]


@pytest.mark.parametrize("args, message", [
    (["data", "check", "nope.jsonl"], "error: nope.jsonl: no such file"),
    (["data", "check"], "error: give a corpus file"),
    (["data", "check", "x.zh", "y.en", "--format", "tsv"], "error: "),
    (["data", "prepare", "nope.yaml"], "error: nope.yaml: no such file"),
])
def test_bad_input_exits_2_without_traceback(args, message, capsys):
    code, out, err = run_main(args, capsys)
    assert code == 2 and message in err and "Traceback" not in err + out


def test_moses_mismatch_exits_2(tmp_path, capsys):
    (tmp_path / "a.zh").write_text("你好\n谢谢\n", encoding="utf-8")
    (tmp_path / "a.en").write_text("Hello\n", encoding="utf-8")
    code, _, err = run_main(["data", "check", str(tmp_path / "a.zh"), str(tmp_path / "a.en")], capsys)
    assert code == 2 and "has 2 lines but" in err


def test_prepare_then_cache_hit(tmp_path, corpus, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"data:\n  train: [{corpus}]\n  vocab_size: 100\n  valid_size: 20\n"
                    f"  cache_dir: {tmp_path / 'cache'}\n")
    code, out, _ = run_main(["data", "prepare", str(spec)], capsys)
    assert code == 0
    assert "splits: 20 validation, 280 training pairs" in out
    assert "vocabulary: sentencepiece unigram, joint, size 100" in out
    assert "unknown rate src" in out and "built in" in out
    code, out, _ = run_main(["data", "prepare", str(spec)], capsys)
    assert code == 0 and "cache hit" in out
    code, _, err = run_main(["data", "prepare", str(spec), "data.scale=1k"], capsys)
    assert code == 2 and "scale 1k asks for 1000 training pairs" in err and "only 280 usable pairs" in err
    code, _, err = run_main(["data", "prepare", str(spec), "data.vocab_type=wordpiece"], capsys)
    assert code == 2 and "data.vocab_type: 'wordpiece' is not one of unigram, bpe" in err


def test_console_script_exit_status(tmp_path):
    """The installed entry point: exit 2, one message, no traceback."""
    (tmp_path / "bin.dat").write_bytes(b"\x00\x01\x02")
    proc = subprocess.run([sys.executable, "-c", "from mt_tune.cli import main; main()", "data", "check",
                           str(tmp_path / "bin.dat")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "not a text file" in proc.stderr and "Traceback" not in proc.stderr
