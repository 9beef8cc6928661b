"""`headprune datasets --fetch DIR`, offline: a file:// mirror of the repository's layout (files
named by stem, no suffix) made of links to the local copy; every file is checked by SHA-256."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from _cli import run_cli
from headprune.data import DATASETS
from headprune.errors import HeadpruneError
from headprune.fetch import SHA256, fetch_datasets


@pytest.fixture
def mirror(tmp_path: Path, air_data_dir: Path) -> Path:
    """The upstream layout (STEM, no suffix) as links to the local copy: nothing is copied."""
    root = tmp_path / "mirror"
    root.mkdir()
    for stem in SHA256:
        (root / stem).symlink_to((air_data_dir / f"{stem}.csv").resolve())
    return root


def test_the_hashes_are_those_of_the_local_copy_one_per_dataset(air_data_dir: Path) -> None:
    assert set(SHA256) == set(DATASETS.values())
    for stem, expected in SHA256.items():
        assert hashlib.sha256((air_data_dir / f"{stem}.csv").read_bytes()).hexdigest() == expected


def test_fetch_downloads_checks_and_lists(mirror: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    dest = tmp_path / "data"
    code, out, err = run_cli(monkeypatch, capsys, "datasets", "G2", "--fetch", dest, "--fetch-from",
                             mirror.as_uri() + "/")
    assert code == 0, err
    assert sorted(p.name for p in dest.iterdir()) == sorted(f"{stem}.csv" for stem in SHA256)
    assert out.count(", checked") == 22 and f"HEADPRUNE_DATA={dest}" in out
    assert "person" in out and "hobbit" in out  # the listing reads the fetched folder
    lines: list[str] = []
    fetch_datasets(dest, mirror.as_uri(), report=lines.append)  # a second fetch keeps what is there
    assert len(lines) == 22 and all("already there" in line for line in lines)


def test_a_file_with_the_wrong_hash_is_refused_and_not_kept(mirror: Path, tmp_path: Path) -> None:
    (mirror / "irony").unlink()
    (mirror / "irony").write_text("tweet,class\nchanged,positive\n")
    dest = tmp_path / "data"
    with pytest.raises(HeadpruneError, match=r"irony is not the expected file \(SHA-256"):
        fetch_datasets(dest, mirror.as_uri(), report=lambda _: None)
    assert not (dest / "irony.csv").exists() and not list(dest.glob(".irony*"))


def test_an_unreachable_source_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    code, _, err = run_cli(monkeypatch, capsys, "datasets", "--fetch", tmp_path / "d", "--fetch-from",
                           (tmp_path / "nowhere").as_uri())
    assert code == 2 and err.count("\n") == 1 and "could not download" in err
