"""The dataset catalogue: load, validate and preprocess tweet datasets (bundled by name, or a user's
file, read by `tables.read_rows`); the groups G1/G2/G3; seeded stratified splits."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from .errors import HeadpruneError
from .tables import decode, read_rows

# Dissertation name -> file stem (METHOD.md, "Data"; Table 4).
DATASETS: dict[str, str] = {
    "irony": "irony",
    "sarcasm": "sarcasm",
    "SemEval-Fig": "SemEval15-Task11",
    "archeage": "archeage",
    "HCR": "HCR",
    "STS-gold": "STS-gold",
    "SemEval16": "SemEval16",
    "person": "person",
    "hobbit": "hobbit",
    "movie": "movie",
    "SemEval18": "SemEval18",
    "SentiStrength": "SentiStrength",
    "Vader": "VADER",
    "SemEval17": "SemEval17-test",
    "aisopos": "ntua",
    "sentiment140": "sentiment140",
    "iphone6": "iphone",
    "sanders": "sanders",
    "Narr": "Narr-KDML-2012",
    "OMD": "debate08",
    "Target-dependent": "Target-dependent",
    "SemEval13": "SemEval13",
}

GROUPS: dict[str, tuple[str, ...]] = {
    "G1": ("irony", "sarcasm", "SemEval-Fig", "archeage", "HCR", "STS-gold", "SemEval16"),
    "G2": ("person", "hobbit", "movie", "SemEval18", "SentiStrength", "Vader", "SemEval17"),
    "G3": ("aisopos", "sentiment140", "iphone6", "sanders", "Narr", "OMD", "Target-dependent", "SemEval13"),
}

# Every accepted spelling (dissertation name or file stem, any case) -> dissertation name.
_ALIASES: dict[str, str] = {}
for _name, _stem in DATASETS.items():
    _ALIASES[_name.lower()] = _name
    _ALIASES[_stem.lower()] = _name

_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_USER = re.compile(r"@\w+")
_SUFFIXES = {".csv": ",", ".tsv": "\t", ".jsonl": None, ".ndjson": None}


@dataclass(frozen=True)
class Dataset:
    """A labelled text dataset, already preprocessed.

    `labels[i]` indexes `classes`; `content_hash` identifies the exact content (texts, labels)."""

    name: str
    texts: list[str]
    labels: np.ndarray
    classes: list[str]
    source: str = ""
    content_hash: str = field(default="", compare=False)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: np.ndarray) -> Dataset:
        idx = np.asarray(indices)
        return Dataset(
            name=self.name,
            texts=[self.texts[i] for i in idx],
            labels=self.labels[idx],
            classes=self.classes,
            source=self.source,
            content_hash=_hash_content([self.texts[i] for i in idx], self.labels[idx], self.classes),
        )

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts)}


def preprocess(text: str) -> str:
    """METHOD.md: URLs -> `someurl`, user mentions -> `someuser`, lowercase."""
    text = _URL.sub("someurl", text)
    text = _USER.sub("someuser", text)
    return text.lower()


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The air-datasets folder: `data_dir`, then $HEADPRUNE_DATA, ./data/air-datasets, ../shared/data/air-datasets."""
    candidates: list[Path] = []
    if data_dir:
        path = Path(data_dir)
        if not path.is_dir():
            raise HeadpruneError(f"--data-dir {data_dir}: no such directory")
        return path
    if os.environ.get("HEADPRUNE_DATA"):
        path = Path(os.environ["HEADPRUNE_DATA"])
        if not path.is_dir():
            raise HeadpruneError(f"HEADPRUNE_DATA={path}: no such directory")
        return path
    candidates += [Path("data/air-datasets"), Path("../shared/data/air-datasets")]
    # Also relative to a source checkout, so tests and tools work from any working directory.
    repo = Path(__file__).resolve().parents[2]
    candidates += [repo / "data/air-datasets", repo.parent / "shared/data/air-datasets"]
    for path in candidates:
        if path.is_dir():
            return path
    raise HeadpruneError(
        "no data directory found: pass --data-dir or set HEADPRUNE_DATA to the folder of the air-datasets CSVs"
    )


def canonical_name(name: str) -> str | None:
    """Dissertation name of a bundled dataset, or None if `name` is not one."""
    return _ALIASES.get(name.lower())


def expand_datasets(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Expand 'G1,person' (names, groups, or file paths) into a list without duplicates, in order."""
    parts = [spec] if isinstance(spec, str) else list(spec)
    items = [s.strip() for part in parts for s in str(part).split(",")]
    out: list[str] = []
    for item in items:
        if not item:
            continue
        if item.upper() in GROUPS:
            names = list(GROUPS[item.upper()])
        elif canonical_name(item):
            names = [canonical_name(item)]  # type: ignore[list-item]
        elif Path(item).suffix.lower() in _SUFFIXES:
            names = [item]
        else:
            raise HeadpruneError(
                f"unknown dataset or group '{item}': use G1, G2, G3, one of {', '.join(DATASETS)}, "
                "or a .csv/.tsv/.jsonl file"
            )
        out += [n for n in names if n not in out]
    if not out:
        raise HeadpruneError("no dataset given")
    return out


def load_dataset(
    name_or_path: str | os.PathLike,
    text_column: str = "tweet",
    label_column: str = "class",
    data_dir: str | os.PathLike | None = None,
    preprocess_text: bool = True,
) -> Dataset:
    """Load a bundled dataset by name (e.g. 'person', 'SemEval17') or any CSV/TSV/JSONL file.

    Texts are preprocessed as METHOD.md says; labels may have any number of classes (sorted)."""
    name_or_path = str(name_or_path)
    canonical = canonical_name(name_or_path)
    if canonical and not Path(name_or_path).is_file():
        path = resolve_data_dir(data_dir) / f"{DATASETS[canonical]}.csv"
        name = canonical
        if not path.is_file():
            raise HeadpruneError(f"dataset '{canonical}': file {path} not found")
    else:
        path = Path(name_or_path)
        name = path.stem
        if not path.exists():
            if path.suffix.lower() not in _SUFFIXES:
                raise HeadpruneError(f"unknown dataset '{name_or_path}': not a bundled dataset name and no such file")
            raise HeadpruneError(f"{path}: file not found")
    texts, raw_labels = _read_labelled(path, text_column, label_column)
    classes = sorted(set(raw_labels))
    if len(classes) < 2:
        raise HeadpruneError(
            f"{path}: column '{label_column}' has a single class ('{classes[0]}'); at least two are needed"
        )
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[c] for c in raw_labels], dtype=np.int64)
    if preprocess_text:
        texts = [preprocess(t) for t in texts]
    return Dataset(
        name=name,
        texts=texts,
        labels=labels,
        classes=classes,
        source=str(path),
        content_hash=_hash_content(texts, labels, classes),
    )


def _read_labelled(path: Path, text_column: str, label_column: str) -> tuple[list[str], list[str]]:
    """(texts, labels) of a user's or bundled file; every mistake in it is one error line."""
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise HeadpruneError(f"{path}: unsupported file type '{suffix}' (use .csv, .tsv or .jsonl)")
    if path.is_dir():
        raise HeadpruneError(f"{path}: is a directory, not a data file")
    raw = path.read_bytes()
    if not raw.strip():
        raise HeadpruneError(f"{path}: file is empty")
    fmt = "jsonl" if _SUFFIXES[suffix] is None else suffix[1:]
    rows = read_rows(decode(raw), str(path), fmt, {text_column: "--text-column", label_column: "--label-column"},
                     scalars=(label_column,))
    if not rows:
        raise HeadpruneError(f"{path}: no rows")
    for position, column in enumerate((text_column, label_column)):
        empty = [i for i, (_, values) in enumerate(rows) if not values[position].strip()]
        if empty:
            raise HeadpruneError(
                f"{path}: row {empty[0] + 1} has an empty '{column}' "
                f"({len(empty)} such row(s); line {rows[empty[0]][0]} of the file)"
            )
    return [values[0] for _, values in rows], [values[1].strip() for _, values in rows]


def _hash_content(texts: list[str], labels: np.ndarray, classes: list[str]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(classes).encode())
    for text, label in zip(texts, labels.tolist()):
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00%d\x00" % label)
    return digest.hexdigest()[:16]


def check_enough_per_class(dataset: Dataset, n_folds: int) -> None:
    """The classification half must hold at least `n_folds` examples of every class."""
    need = 2 * n_folds
    for cls, count in dataset.class_counts().items():
        if count < need:
            raise HeadpruneError(
                f"{dataset.source or dataset.name}: class '{cls}' has {count} examples; "
                f"{need} are needed (half of them for {n_folds}-fold cross-validation)"
            )


def split_halves(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded 50/50 split: (finetuning indices, classification indices), read-only.

    Memoised on (labels, seed): a run asks for the same few dozen (dataset, seed) splits tens of
    thousands of times (every evaluation, in planning, batching and training), ~2 ms each."""
    labels = np.asarray(labels)
    if labels.dtype.kind == "O":
        key = (labels.dtype.str, hashlib.blake2b(repr(labels.tolist()).encode(), digest_size=16).digest())
    else:
        key = (labels.dtype.str, labels.shape, hashlib.blake2b(labels.tobytes(), digest_size=16).digest())
    return _split_halves(key, labels, int(seed))


_SPLITS: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def _split_halves(key: tuple, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    found = _SPLITS.get((key, seed))
    if found is None:
        indices = np.arange(len(labels))
        finetune, classify = train_test_split(indices, test_size=0.5, stratify=labels, random_state=seed,
                                              shuffle=True)
        found = (np.sort(finetune), np.sort(classify))
        for half in found:
            half.setflags(write=False)
        if len(_SPLITS) >= 4096:
            _SPLITS.clear()
        _SPLITS[(key, seed)] = found
    return found


def cap_examples(dataset: Dataset, max_examples: int, seed: int = 0) -> Dataset:
    """A stratified, seeded subsample of at most `max_examples` rows (0 = all). A speed option, not the paper."""
    if max_examples <= 0 or len(dataset) <= max_examples:
        return dataset
    keep, _ = train_test_split(
        np.arange(len(dataset)), train_size=max_examples, stratify=dataset.labels, random_state=seed, shuffle=True
    )
    return dataset.subset(np.sort(keep))
