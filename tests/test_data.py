"""data.py: preprocessing, bundled datasets and groups, user files, splits, and every bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from headprune.data import (
    DATASETS,
    GROUPS,
    canonical_name,
    check_enough_per_class,
    expand_datasets,
    load_dataset,
    preprocess,
    resolve_data_dir,
    split_halves,
)
from headprune.errors import HeadpruneError

# ----------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Check http://t.co/AbC123 NOW", "check someurl now"),
        ("see https://example.com/a?b=1, and www.Foo.org/x.", "see someurl and someurl"),
        ("HTTPS://T.CO/XYZ", "someurl"),
        ("@User_1 hi @bob!", "someuser hi someuser!"),
        ("RT @Jane: Loved it @ the cinema", "rt someuser: loved it @ the cinema"),
        ("http://x.com/@handle is a link", "someurl is a link"),
        ("Colin Firth better WIN the Oscar.", "colin firth better win the oscar."),
        ("no change here", "no change here"),
        ("", ""),
    ],
)
def test_preprocess_by_hand(raw: str, expected: str) -> None:
    assert preprocess(raw) == expected


def test_bundled_dataset_is_preprocessed(person_frame) -> None:
    ds = load_dataset("person")
    assert ds.texts[0] == "someuser someuser big fan of natalie portman since closer"
    assert person_frame["tweet"][0] == "@username @username Big fan of Natalie Portman since Closer"
    raw = load_dataset("person", preprocess_text=False)
    assert raw.texts[0] == person_frame["tweet"][0]
    assert raw.content_hash != ds.content_hash


# ----------------------------------------------------------------------------- bundled datasets


def test_every_name_and_file_stem_resolves() -> None:
    assert len(DATASETS) == 22
    for name, stem in DATASETS.items():
        for spelling in (name, stem, name.lower(), stem.upper()):
            assert canonical_name(spelling) == name
            assert expand_datasets(spelling) == [name]


def test_every_bundled_file_exists(air_data_dir: Path) -> None:
    for stem in DATASETS.values():
        assert (air_data_dir / f"{stem}.csv").is_file(), stem


@pytest.mark.parametrize(
    ("group", "n_datasets", "n_tweets"),
    [("G1", 7, 18_333), ("G2", 7, 16_213), ("G3", 8, 13_371)],
)
def test_group_sizes(group: str, n_datasets: int, n_tweets: int) -> None:
    names = expand_datasets(group)
    assert names == list(GROUPS[group]) and len(names) == n_datasets
    total = 0
    for name in names:
        ds = load_dataset(name)
        assert ds.name == name
        assert ds.classes == ["negative", "positive"]
        assert len(ds.texts) == len(ds.labels)
        total += len(ds)
    assert total == n_tweets


def test_groups_partition_the_datasets() -> None:
    everything = [n for names in GROUPS.values() for n in names]
    assert sorted(everything) == sorted(DATASETS)


def test_expand_mixes_groups_names_and_files_without_duplicates() -> None:
    assert expand_datasets("g2, person,HOBBIT ,my.csv") == [*GROUPS["G2"], "my.csv"]
    assert expand_datasets(["sanders", "iphone", "sanders"]) == ["sanders", "iphone6"]
    assert expand_datasets("G1,G2,G3") == [*GROUPS["G1"], *GROUPS["G2"], *GROUPS["G3"]]


def test_narr_count() -> None:
    assert len(load_dataset("Narr")) == 1227  # METHOD.md: Table 4's 1,739 is a typo


def test_content_hash_is_stable_and_content_sensitive() -> None:
    a, b = load_dataset("person"), load_dataset("person")
    assert a.content_hash == b.content_hash and len(a.content_hash) == 16
    assert load_dataset("hobbit").content_hash != a.content_hash
    sub = a.subset(np.arange(10))
    assert len(sub) == 10 and sub.content_hash != a.content_hash
    assert sub.texts == a.texts[:10] and sub.classes == a.classes


# ----------------------------------------------------------------------------- user files


def test_user_csv_with_defaults(small_dataset_csv: Path) -> None:
    ds = load_dataset(small_dataset_csv)
    assert ds.name == "small" and len(ds) == 60
    assert ds.class_counts() == {"negative": 30, "positive": 30}
    assert ds.source == str(small_dataset_csv)
    assert all(t == t.lower() and "@" not in t.split()[0] for t in ds.texts)


def test_user_file_shadowing_a_bundled_name_is_read_as_a_file(make_dataset_csv, monkeypatch) -> None:
    path = make_dataset_csv(per_class=5, name="person.csv")
    monkeypatch.chdir(path.parent)
    assert len(load_dataset("person.csv")) == 10


def test_user_tsv_three_classes_custom_columns(tmp_path: Path) -> None:
    path = tmp_path / "emotions.tsv"
    rows = [("I LOVE it @bob", "joy"), ("so sad http://t.co/x", "sadness"), ("what, why?", "anger")] * 4
    path.write_text("id\tbody\tfeeling\n" + "".join(f"{i}\t{t}\t{c}\n" for i, (t, c) in enumerate(rows)))
    ds = load_dataset(path, text_column="body", label_column="feeling")
    assert ds.classes == ["anger", "joy", "sadness"]
    assert ds.class_counts() == {"anger": 4, "joy": 4, "sadness": 4}
    assert ds.texts[:3] == ["i love it someuser", "so sad someurl", "what, why?"]
    assert ds.labels[:3].tolist() == [1, 2, 0]


def test_user_jsonl_three_classes_custom_columns(tmp_path: Path) -> None:
    path = tmp_path / "topics.jsonl"
    records = [{"text": f"Tweet {i} @x", "y": i % 3, "extra": None} for i in range(9)]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    ds = load_dataset(path, text_column="text", label_column="y")
    assert ds.name == "topics" and len(ds) == 9
    assert ds.classes == ["0", "1", "2"]
    assert ds.labels.tolist() == [0, 1, 2] * 3
    assert ds.texts[4] == "tweet 4 someuser"


def test_user_csv_with_quoted_commas_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    path.write_bytes('\ufefftext,label\n"Hello, World",pos\n"a ""quoted"" one",neg\n'.encode("utf-8"))
    ds = load_dataset(path, text_column="text", label_column="label")
    assert ds.texts == ["hello, world", 'a "quoted" one']
    assert ds.classes == ["neg", "pos"]


# ----------------------------------------------------------------------------- splits


def test_split_halves_stratified_and_seeded(small_dataset_csv: Path) -> None:
    labels = load_dataset(small_dataset_csv).labels
    finetune, classify = split_halves(labels, seed=1)
    assert len(finetune) == len(classify) == 30
    assert sorted(np.concatenate([finetune, classify]).tolist()) == list(range(60))
    assert np.bincount(labels[finetune]).tolist() == [15, 15]
    assert np.bincount(labels[classify]).tolist() == [15, 15]
    assert (np.diff(finetune) > 0).all() and (np.diff(classify) > 0).all()
    again = split_halves(labels, seed=1)
    assert np.array_equal(again[0], finetune) and np.array_equal(again[1], classify)
    other = split_halves(labels, seed=2)
    assert not np.array_equal(other[0], finetune)


def test_split_halves_memo_keys_on_the_labels_and_is_read_only() -> None:
    """The memoised split of equal labels is the same split; other labels (same length) get their
    own; callers cannot corrupt the shared arrays."""
    labels = np.array([0, 1] * 20)
    first = split_halves(labels, seed=3)
    assert split_halves(labels.copy(), seed=3) is first
    flipped = split_halves(1 - labels, seed=3)  # same bytes length, other content
    assert flipped is not first
    changed = labels.copy()
    changed[:4] = [1, 1, 0, 0]
    fresh = train_test_split(np.arange(40), test_size=0.5, stratify=changed, random_state=3, shuffle=True)[0]
    assert np.array_equal(split_halves(changed, seed=3)[0], np.sort(fresh))
    with pytest.raises(ValueError):
        first[0][0] = 5


def test_split_halves_keeps_unbalanced_proportions() -> None:
    ds = load_dataset("person")  # 127 negative, 312 positive
    finetune, classify = split_halves(ds.labels, seed=0)
    assert abs(len(finetune) - len(classify)) <= 1
    for half in (finetune, classify):
        share = ds.labels[half].mean()
        assert abs(share - ds.labels.mean()) < 0.01


# ----------------------------------------------------------------------------- data directory


@pytest.fixture
def clean_env(monkeypatch, tmp_path: Path):
    monkeypatch.delenv("HEADPRUNE_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_data_dir_precedence(clean_env, tmp_path: Path) -> None:
    explicit, env = tmp_path / "explicit", tmp_path / "env"
    local = tmp_path / "data" / "air-datasets"
    for path in (explicit, env, local):
        path.mkdir(parents=True)
    clean_env.setenv("HEADPRUNE_DATA", str(env))
    assert resolve_data_dir(explicit) == explicit
    assert resolve_data_dir(str(explicit)) == explicit
    assert resolve_data_dir() == env
    clean_env.delenv("HEADPRUNE_DATA")
    assert resolve_data_dir().resolve() == local.resolve()


def test_data_dir_sibling_shared_then_source_checkout(clean_env, tmp_path: Path, air_data_dir: Path) -> None:
    work = tmp_path / "checkout"
    shared = tmp_path / "shared" / "data" / "air-datasets"
    work.mkdir()
    shared.mkdir(parents=True)
    clean_env.chdir(work)
    assert resolve_data_dir().resolve() == shared.resolve()
    clean_env.chdir(tmp_path)  # nothing relative to here: found next to the source checkout
    assert resolve_data_dir().resolve() == air_data_dir.resolve()


def test_data_dir_env_is_used_for_bundled_names(clean_env, tmp_path: Path, small_dataset_csv: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "person.csv").write_bytes(small_dataset_csv.read_bytes())
    clean_env.setenv("HEADPRUNE_DATA", str(folder))
    assert len(load_dataset("person")) == 60
    assert len(load_dataset("person", data_dir=folder)) == 60


def test_missing_data_dirs(clean_env, tmp_path: Path) -> None:
    with pytest.raises(HeadpruneError) as err:
        resolve_data_dir(tmp_path / "nope")
    assert str(err.value) == f"--data-dir {tmp_path / 'nope'}: no such directory"
    clean_env.setenv("HEADPRUNE_DATA", str(tmp_path / "gone"))
    with pytest.raises(HeadpruneError) as err:
        resolve_data_dir()
    assert str(err.value) == f"HEADPRUNE_DATA={tmp_path / 'gone'}: no such directory"


def test_bundled_file_missing_from_data_dir(tmp_path: Path) -> None:
    with pytest.raises(HeadpruneError) as err:
        load_dataset("SemEval17", data_dir=tmp_path)
    assert str(err.value) == f"dataset 'SemEval17': file {tmp_path / 'SemEval17-test.csv'} not found"


# ----------------------------------------------------------------------------- bad inputs


def _message(func, *args, **kwargs) -> str:
    with pytest.raises(HeadpruneError) as err:
        func(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.csv"
    assert _message(load_dataset, path) == f"{path}: file not found"


def test_unknown_dataset_name() -> None:
    assert _message(load_dataset, "persn") == (
        "unknown dataset 'persn': not a bundled dataset name and no such file"
    )


def test_unknown_name_or_group_in_spec() -> None:
    message = _message(expand_datasets, "G1,G4")
    assert message.startswith("unknown dataset or group 'G4': use G1, G2, G3, one of irony, sarcasm,")
    assert message.endswith("SemEval13, or a .csv/.tsv/.jsonl file")
    assert _message(expand_datasets, " , ") == "no dataset given"


def test_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "data.xlsx"
    path.write_text("tweet,class\na,b\n")
    message = _message(load_dataset, path)
    assert message == f"{path}: unsupported file type '.xlsx' (use .csv, .tsv or .jsonl)"


def test_missing_text_column_names_option_and_columns(make_dataset_csv) -> None:
    path = make_dataset_csv(text_column="body", label_column="sentiment")
    assert _message(load_dataset, path) == (
        f"{path}: no column 'tweet' (--text-column); the columns are: body, sentiment"
    )
    assert _message(load_dataset, path, text_column="body") == (
        f"{path}: no column 'class' (--label-column); the columns are: body, sentiment"
    )
    assert len(load_dataset(path, text_column="body", label_column="sentiment")) == 60


def test_misnamed_column_case_matters(small_dataset_csv: Path) -> None:
    assert _message(load_dataset, small_dataset_csv, label_column="Class") == (
        f"{small_dataset_csv}: no column 'Class' (--label-column); the columns are: tweet, class"
    )


@pytest.mark.parametrize("content", [b"", b"   \n\n"])
def test_empty_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(content)
    assert _message(load_dataset, path) == f"{path}: file is empty"


def test_header_only(tmp_path: Path) -> None:
    path = tmp_path / "header.csv"
    path.write_text("tweet,class\n")
    assert _message(load_dataset, path) == f"{path}: no rows"


def test_single_class(tmp_path: Path) -> None:
    path = tmp_path / "one.csv"
    path.write_text("tweet,class\nfirst,positive\nsecond,positive\n")
    assert _message(load_dataset, path) == (
        f"{path}: column 'class' has a single class ('positive'); at least two are needed"
    )


def test_empty_cells(tmp_path: Path) -> None:
    path = tmp_path / "holes.csv"
    path.write_text("tweet,class\nfine,positive\nalso fine,negative\n,positive\n  ,negative\n")
    assert _message(load_dataset, path) == (
        f"{path}: row 3 has an empty 'tweet' (2 such row(s); line 4 of the file)"
    )
    jsonl = tmp_path / "holes.jsonl"
    jsonl.write_text('{"tweet": "a", "class": "x"}\n{"tweet": "b", "class": ""}\n')
    assert _message(load_dataset, jsonl) == (
        f"{jsonl}: row 2 has an empty 'class' (1 such row(s); line 2 of the file)"
    )


def test_too_few_examples_per_class(make_dataset_csv) -> None:
    ds = load_dataset(make_dataset_csv(per_class=9))
    check_enough_per_class(ds, n_folds=4)  # 9 >= 8
    assert _message(check_enough_per_class, ds, n_folds=5) == (
        f"{ds.source}: class 'negative' has 9 examples; 10 are needed (half of them for 5-fold cross-validation)"
    )


def test_too_few_examples_names_the_small_class(tmp_path: Path) -> None:
    path = tmp_path / "lopsided.csv"
    path.write_text("tweet,class\n" + "".join(f"t{i},big\n" for i in range(20)) + "s1,small\ns2,small\n")
    ds = load_dataset(path)
    assert _message(check_enough_per_class, ds, 2) == (
        f"{path}: class 'small' has 2 examples; 4 are needed (half of them for 2-fold cross-validation)"
    )


def test_undecodable_bytes_counts_rows(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    lines = [
        "tweet,class",
        "ok,positive",
        "ok too,negative",
        "caf\xe9,positive",
        "fine,negative",
        "na\xefve,negative",
    ]
    path.write_bytes("\n".join(lines).encode("latin-1") + b"\n")
    assert _message(load_dataset, path) == (
        f"{path}: 2 line(s) are not valid UTF-8, the first is line 4 (column 'tweet'); re-save the file as UTF-8"
    )
    jsonl = tmp_path / "latin1.jsonl"
    jsonl.write_bytes('{"tweet": "caf\xe9", "class": "a"}\n'.encode("latin-1"))
    assert _message(load_dataset, jsonl) == (
        f"{jsonl}: 1 line(s) are not valid UTF-8, the first is line 1 (column 'tweet'); re-save the file as UTF-8"
    )


def test_malformed_jsonl_row(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text('{"tweet": "a", "class": "x"}\n{"tweet": "b", "class": \n{"tweet": "c", "class": "y"}\n')
    assert _message(load_dataset, path) == f"{path}: line 2 is not valid JSON (Expecting value, at character 25)"


def test_unparseable_csv(tmp_path: Path) -> None:
    path = tmp_path / "ragged.csv"
    path.write_text("tweet,class\na,positive\nb,negative,extra,more\n")
    assert _message(load_dataset, path) == (
        f"{path}: line 3 has 4 fields, the header (line 1) has 2: tweet, class; a value that contains ',' must "
        "be in double quotes"
    )


def test_mojibake_is_kept_as_published(air_data_dir: Path) -> None:
    # README: some rows carry UTF-8-read-as-Latin-1 mojibake; they decode and load unchanged.
    raw = load_dataset("sanders", preprocess_text=False)
    rows = [t for t in raw.texts if "\u00c3" in t]
    assert rows and len(raw) == 1224
    assert all(t in (air_data_dir / "sanders.csv").read_text(encoding="utf-8") for t in rows)


# ----------------------------------------------------------------------------- malformed rows
# "line N" is the N-th line of the file as an editor counts it (1-based, the header is line 1).

QUOTE_HINT = "(one row: a quoted value runs over them; is a '\"' unmatched?)"


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        pytest.param(  # the case: used to end in a TypeError
            "extra.tsv", "tweet\tclass\na\tpositive\nb\tnegative\textra\n",
            "line 3 has 3 fields, the header (line 1) has 2: tweet, class; a value that contains a tab must be "
            "in double quotes", id="tsv-more-fields"),
        pytest.param(
            "short.tsv", "tweet\tclass\na\tpositive\nb\n",
            "line 3 has 1 field(s), the header (line 1) has 2: tweet, class: no value for column 'class'",
            id="tsv-fewer-fields"),
        pytest.param(  # pandas read a first row with one field more as an index column, shifting every column
            "first.csv", "tweet,class\na,positive,x\nb,negative\n",
            "line 2 has 3 fields, the header (line 1) has 2: tweet, class; a value that contains ',' must be in "
            "double quotes", id="csv-first-row-more-fields"),
        pytest.param(
            "trailing.csv", "tweet,class\na,positive,\nb,negative,\n",
            "line 2 has 3 fields, the header (line 1) has 2: tweet, class; a value that contains ',' must be in "
            "double quotes", id="csv-trailing-delimiter"),
        pytest.param(
            "wide.csv", "id,tweet,class,source\n1,a,positive,web\n2,b\n",
            "line 3 has 2 field(s), the header (line 1) has 4: id, tweet, class, source: no value for column "
            "'class' and 1 more", id="csv-two-missing"),
        pytest.param(
            "blank.csv", "tweet,class\n\na,positive\n\nb\n",
            "line 5 has 1 field(s), the header (line 1) has 2: tweet, class: no value for column 'class'",
            id="blank-lines-counted"),
        pytest.param(
            "unmatched.csv", 'tweet,class\n"oops,positive\nb,negative\nc,positive\n',
            f"lines 2-4 {QUOTE_HINT} has 1 field(s), the header (line 1) has 2: tweet, class: no value for "
            "column 'class'", id="unmatched-quote"),
        pytest.param(
            "runaway.csv", 'tweet,class\n"open,positive\n' + "a" * 140_000 + "\n",
            "lines 2-3: cannot parse (field larger than field limit (131072)); is a '\"' unmatched?",
            id="quote-open-for-pages"),
        pytest.param(
            "open.csv", 'tweet,class\na,positive\nb,"negative\n',
            "line 3: a '\"' opens a quoted value that is never closed (it runs to the end of the file, line 3)",
            id="quote-open-at-end"),
        pytest.param(
            "multiline.csv", 'tweet,class\n"two\nlines",positive\n,negative\n',
            "row 2 has an empty 'tweet' (1 such row(s); line 4 of the file)", id="line-after-quoted-newline"),
        pytest.param(
            "twice.csv", "tweet,class,tweet\na,b,c\n",
            "column 'tweet' appears 2 times in the header (line 1, fields 1, 3); rename all but one",
            id="repeated-column"),
        pytest.param(
            "header.csv", b"tw\xe9et,class\na,b\n",
            "1 line(s) are not valid UTF-8, the first is line 1 (the header); re-save the file as UTF-8",
            id="header-not-utf8"),
        pytest.param(
            "label.csv", b"tweet,class\nfine,positive\nok,n\xe9gative\n",
            "1 line(s) are not valid UTF-8, the first is line 3 (column 'class'); re-save the file as UTF-8",
            id="label-not-utf8"),
        pytest.param(
            "array.jsonl", '{"tweet": "a", "class": "x"}\n["b", "y"]\n',
            "line 2 is a list, not a JSON object with the keys 'tweet', 'class' (JSON lines: one object per line)",
            id="jsonl-not-an-object"),
        pytest.param(
            "whole.jsonl", '[{"tweet": "a", "class": "x"}, {"tweet": "b", "class": "y"}]\n',
            "line 1 is a list, not a JSON object with the keys 'tweet', 'class' (JSON lines: one object per line)",
            id="json-array-file"),
        pytest.param(
            "number.jsonl", '{"tweet": "a", "class": "x"}\n\n{"tweet": 12, "class": "y"}\n',
            "line 3, column 'tweet': expected a string, got a number (12)", id="jsonl-text-not-a-string"),
        pytest.param(
            "listlabel.jsonl", '{"tweet": "a", "class": ["x"]}\n',
            "line 1, column 'class': expected a string, a number or a boolean, got a list",
            id="jsonl-label-a-list"),
        pytest.param(
            "nokey.jsonl", '{"tweet": "a", "class": "x"}\n{"tweet": "b", "label": "y"}\n',
            "line 2 has no 'class' (--label-column); its keys are: tweet, label", id="jsonl-missing-key"),
        pytest.param(
            "badjson.jsonl", '{"tweet": "a", "class": "x"}\n{"tweet": "b" "class": "y"}\n',
            "line 2 is not valid JSON (Expecting ',' delimiter, at character 15)", id="jsonl-bad-json"),
    ],
)
def test_malformed_rows_name_the_line_and_column(tmp_path: Path, name: str, content, expected: str) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    assert _message(load_dataset, path) == f"{path}: {expected}"
    assert path.read_bytes() == (content if isinstance(content, bytes) else content.encode())  # never altered


def test_a_directory_named_like_a_data_file(tmp_path: Path) -> None:
    path = tmp_path / "folder.csv"
    path.mkdir()
    assert _message(load_dataset, path) == f"{path}: is a directory, not a data file"


def test_jsonl_values_as_json_writes_them(tmp_path: Path) -> None:
    """A tweet's U+2028 or U+0085 is no line break; labels may be booleans or numbers; null is empty."""
    path = tmp_path / "values.jsonl"
    records = [{"tweet": "one\u2028two", "class": True}, {"tweet": "caf\u00e9\u0085", "class": False},
               {"tweet": "x", "class": True}]
    path.write_text("\r\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\r\n", encoding="utf-8")
    ds = load_dataset(path, preprocess_text=False)
    assert ds.texts == ["one\u2028two", "caf\u00e9\u0085", "x"]
    assert ds.classes == ["False", "True"] and ds.labels.tolist() == [1, 0, 1]
    path.write_text('{"tweet": null, "class": "a"}\n{"tweet": "b", "class": "c"}\n')
    assert _message(load_dataset, path) == f"{path}: row 1 has an empty 'tweet' (1 such row(s); line 1 of the file)"


def test_quoted_delimiters_quotes_and_newlines_load_exactly(tmp_path: Path) -> None:
    texts = ['say "hi", then\nleave', "tab\there", "cr\ronly", "plain"]
    for suffix, delimiter in ((".csv", ","), (".tsv", "\t")):
        path = tmp_path / f"tricky{suffix}"
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, delimiter=delimiter, lineterminator="\r\n")
            writer.writerow(["tweet", "class"])
            writer.writerows([t, c] for t, c in zip(texts, ["a", "b", "a", "b"]))
        assert load_dataset(path, preprocess_text=False).texts == texts
