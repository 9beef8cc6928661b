"""The README's Python API example runs as written, on the tiny BERT and a small dataset instead of
MiniLM and the bundled tweets (the only substitutions, listed in `SUBSTITUTIONS`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def api_example() -> str:
    text = README.read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_api_example_imports_only_headprune() -> None:
    """A user's script needs the public API alone (`headprune.__all__`), never a module behind it."""
    import ast

    import headprune

    tree = ast.parse(api_example())
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert imported == ["headprune"]
    assert not [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    used = {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "hp"}
    assert used and used <= set(headprune.__all__), sorted(used - set(headprune.__all__))


def test_readme_python_api_example_runs(tiny_bert_dir: Path, small_dataset_csv: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    code = api_example()
    substitutions = {
        '"minilm"': repr(str(tiny_bert_dir)),
        '"irony"': repr(str(small_dataset_csv)),
        '"person"': repr(str(small_dataset_csv)),
        "least_important(12)": "least_important(4)",  # the tiny BERT has 12 heads, MiniLM 72
        "k_values=[0, 12, 24]": "k_values=[0, 4, 8]",
    }
    for old, new in substitutions.items():
        assert old in code, f"the README example no longer contains {old}"
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    printed: list = []
    namespace = {"print": lambda *args: printed.append(args)}
    exec(compile(code, str(README), "exec"), namespace)
    assert len(printed) == 1 and 0.0 <= printed[0][0] <= 1.0
    assert namespace["h1"].chosen_k in (0, 4, 8)
    assert (tmp_path / "pruned-minilm" / "headprune.json").is_file()
    assert (tmp_path / "runs" / "api" / "store.sqlite").is_file()
