"""The CLI's handling of user mistakes: one line `error: ...` on stderr, exit code 2, no traceback.

Most cases call the real `headprune.cli.main()` in this process (sys.argv patched; a real process
pays ~5 s of imports per call); two run it as a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from _cli import run_cli


def assert_one_error_line(code: int, out: str, err: str, *fragments: str) -> str:
    assert code == 2, (code, out, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture
def cli(monkeypatch, capsys):
    monkeypatch.delenv("HEADPRUNE_DATA", raising=False)
    return lambda *args: run_cli(monkeypatch, capsys, *args)


# ----------------------------------------------------------------------------- datasets: success


def test_datasets_lists_a_user_file(cli, small_dataset_csv: Path) -> None:
    code, out, err = cli("datasets", small_dataset_csv)
    assert code == 0, err
    assert out.split() == ["small", "60", "negative=30,", "positive=30"]


def test_datasets_custom_columns_three_classes(cli, tmp_path: Path) -> None:
    path = tmp_path / "three.tsv"
    path.write_text("body\tmood\n" + "".join(f"text {i}\t{['a', 'b', 'c'][i % 3]}\n" for i in range(9)))
    code, out, err = cli("datasets", path, "--text-column", "body", "--label-column", "mood")
    assert code == 0, err
    assert out.split() == ["three", "9", "a=3,", "b=3,", "c=3"]


def test_datasets_bundled_with_data_dir(cli, air_data_dir: Path) -> None:
    code, out, err = cli("datasets", "person,movie", "--data-dir", air_data_dir)
    assert code == 0, err
    assert [line.split()[:2] for line in out.splitlines()] == [["person", "439"], ["movie", "561"]]


# ----------------------------------------------------------------------------- datasets: mistakes


def test_missing_file(cli, tmp_path: Path) -> None:
    path = tmp_path / "absent.csv"
    line = assert_one_error_line(*cli("datasets", path))
    assert line == f"error: {path}: file not found"


def test_missing_text_column_names_option_and_columns(cli, make_dataset_csv) -> None:
    path = make_dataset_csv(text_column="body", label_column="sentiment")
    line = assert_one_error_line(*cli("datasets", path))
    assert line == f"error: {path}: no column 'tweet' (--text-column); the columns are: body, sentiment"


def test_misnamed_label_column(cli, small_dataset_csv: Path) -> None:
    line = assert_one_error_line(*cli("datasets", small_dataset_csv, "--label-column", "label"))
    assert line == (
        f"error: {small_dataset_csv}: no column 'label' (--label-column); the columns are: tweet, class"
    )


def test_empty_file(cli, tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("")
    assert assert_one_error_line(*cli("datasets", path)) == f"error: {path}: file is empty"


def test_single_class(cli, tmp_path: Path) -> None:
    path = tmp_path / "one.csv"
    path.write_text("tweet,class\na,positive\nb,positive\n")
    assert_one_error_line(*cli("datasets", path), str(path), "'class'", "single class ('positive')")


def test_undecodable_bytes(cli, tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("tweet,class\ncaf\xe9,positive\nok,negative\nna\xefve,negative\n".encode("latin-1"))
    line = assert_one_error_line(*cli("datasets", path))
    assert line == (
        f"error: {path}: 2 line(s) are not valid UTF-8, the first is line 2 (column 'tweet'); re-save the file as UTF-8"
    )


def test_malformed_jsonl(cli, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"tweet": "a", "class": "x"}\n{"tweet": oops}\n')
    line = assert_one_error_line(*cli("datasets", path))
    assert line == f"error: {path}: line 2 is not valid JSON (Expecting value, at character 11)"


def test_unknown_dataset_name(cli) -> None:
    assert_one_error_line(*cli("datasets", "G1,persn"), "unknown dataset or group 'persn'", "G1, G2, G3")


def test_missing_data_dir(cli, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    line = assert_one_error_line(*cli("datasets", "person", "--data-dir", missing))
    assert line == f"error: --data-dir {missing}: no such directory"


def test_bundled_file_missing_from_data_dir(cli, tmp_path: Path) -> None:
    line = assert_one_error_line(*cli("datasets", "Vader", "--data-dir", tmp_path))
    assert line == f"error: dataset 'Vader': file {tmp_path / 'VADER.csv'} not found"


def test_bad_headprune_data(cli, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HEADPRUNE_DATA", str(tmp_path / "gone"))
    line = assert_one_error_line(*cli("datasets", "person"))
    assert line == f"error: HEADPRUNE_DATA={tmp_path / 'gone'}: no such directory"


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        pytest.param(  # the case: it ended in `TypeError: can only concatenate tuple (not "int") to tuple`
            "ragged.tsv", "tweet\tclass\nfine\tpositive\nsplit\there\tnegative\nok\tnegative\n",
            "line 3 has 3 fields, the header (line 1) has 2: tweet, class; a value that contains a tab must be in "
            "double quotes", id="more-fields"),
        pytest.param(
            "short.csv", "id,tweet,class\n1,fine,positive\n2,no label\n",
            "line 3 has 2 field(s), the header (line 1) has 3: id, tweet, class: no value for column 'class'",
            id="fewer-fields"),
        pytest.param(
            "list.jsonl", '{"tweet": "a", "class": "x"}\n[1, 2]\n',
            "line 2 is a list, not a JSON object with the keys 'tweet', 'class' (JSON lines: one object per line)",
            id="jsonl-not-an-object"),
    ],
)
def test_malformed_row(cli, tmp_path: Path, name: str, content: str, expected: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    assert assert_one_error_line(*cli("datasets", path)) == f"error: {path}: {expected}"


@pytest.mark.parametrize("content", [b"not a database at all\n" * 40, b"SQLite format 3\x00" + b"\x00" * 200])
def test_verify_with_a_store_that_is_not_one(cli, tmp_path: Path, content: bytes) -> None:
    from _tiny import make_summary, write_summary

    run = tmp_path / "run"
    write_summary(run, make_summary())
    (run / "store.sqlite").write_bytes(content)
    line = assert_one_error_line(*cli("verify", run), str(run / "store.sqlite"), "left as it is")
    assert "results store" in line
    assert (run / "store.sqlite").read_bytes() == content
    assert sorted(p.name for p in run.iterdir()) == ["store.sqlite", "summary.json"]


# ----------------------------------------------------------------------------- a real process


def _subprocess(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("HEADPRUNE_DATA", None)
    return subprocess.run(args, check=False, capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def test_subprocess_error_is_one_line_exit_2(make_dataset_csv) -> None:
    path = make_dataset_csv(label_column="sentiment")
    result = _subprocess(
        [sys.executable, "-c", "from headprune.cli import main; main()", "datasets", str(path)], path.parent
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr == (
        f"error: {path}: no column 'class' (--label-column); the columns are: tweet, sentiment\n"
    )
    assert result.stdout == ""


def test_python_dash_m_headprune(small_dataset_csv: Path) -> None:
    result = _subprocess(
        [sys.executable, "-m", "headprune", "datasets", small_dataset_csv.name], small_dataset_csv.parent
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["small", "60", "negative=30,", "positive=30"]
