"""`headprune datasets --fetch DIR`: the 22 bundled datasets downloaded from their public repository
(joncarv/air-datasets, Carvalho & Plastino 2021) for a user without a copy, each file checked
against the SHA-256 of the copy every result of this project was computed on.

The repository names its files by stem without a suffix; they are saved as STEM.csv, the layout
`resolve_data_dir` looks for (pass DIR as --data-dir or $HEADPRUNE_DATA). A file already in DIR with
the right hash is kept; a download with the wrong one is refused and not kept."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

from .errors import HeadpruneError

# The commit of joncarv/air-datasets that holds the files (pinned: the hashes below are its files').
SOURCE = "https://raw.githubusercontent.com/joncarv/air-datasets/27b63fb6dcbc853657cf68d0de84dc0a8014382d/"

# File stem -> SHA-256 of its bytes.
SHA256: dict[str, str] = {
    "HCR": "ceff595f39557a0e84d4d719f4f635cd138e85d5a0839df9b560986aa0fcebd1",
    "Narr-KDML-2012": "f0b796a4894591d05f6dea53a7e6918933e1f4f30871d276c129bc2cb4c2f387",
    "STS-gold": "e626e27d103b937a2287d0716584fd94585cb7bcb7e2da9b8ddf279bcf479592",
    "SemEval13": "777f607e3f9f74b59eef6fa7eb8e86a02073d30916c0fd5e11ee24ab218b81d0",
    "SemEval15-Task11": "fba3124f2afa5478f325b488301fbea42f9868413f623dc117226501006f4dba",
    "SemEval16": "336ae1cc0e1e8b079e1ba349a2e9382e8afdc29f3e1e02beea42529526d20218",
    "SemEval17-test": "62621e88a13ec9fb126ee2af447c600200c0aae9a6b0e5453f026a3c8cc500f8",
    "SemEval18": "8fcc0ff1a1a640722b2836526cf574b44199b507b215a84720892178fefe9d23",
    "SentiStrength": "d27a35cfab18b7e2976b7eda69ff15877e7c1dc8acc1cd2235ac55539f255392",
    "Target-dependent": "f1a1a82a24dfb993b55bc29999ef3c98fc983214c84ef329776a4cb8a8f9af56",
    "VADER": "3afb856327d8a13cdd836dbf37fe5faa7d1c82edb6f544007a6d8f99840ff555",
    "archeage": "b8afd59f1147f14bf3074559d8f7e18b47d445cbeca927e508c49cd9ac9a3975",
    "debate08": "464fdcd9fc117f8ff47d5896b0a21a5e33ec8a28973a5995e8e5b165c19d4f2a",
    "hobbit": "d3113d8cdd87b0eccaa82a8848cf8a748501eb912a45a5aec279dee9ce59a9a2",
    "iphone": "673bf3ac9cccb1989ad99e7661e241fd2a0212c89c4e57155d6c2558fcf2c47a",
    "irony": "5513d5c2b23a4bd2dd125eef69637d0742e84320c75b4feeaf7a89aba422138d",
    "movie": "312bf8c060ed515daf44f632e8a0078fc0146d70b79c1cdfa4afa60cdf9be0cb",
    "ntua": "993dac4f050ba9d4dc4ed55cc0cc9e660250094276c0729df71c63b24da9f30d",
    "person": "f34310100edbb8d487daee9cf2a67cb28f80052a016b9cadf122472df4beb74e",
    "sanders": "57acb52f261450e8494fd153cde84da021e767317c24da0de510e3f69cc86320",
    "sarcasm": "7165888bdf9c5f41f2181bbb87ef345f1e975b700e693201c5383f6846264041",
    "sentiment140": "61b0867bc67ad5f31411c7ce877ae0d525f58fa391cecd17d8b67555fabbfe9b",
}


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_datasets(dest: str | os.PathLike, source: str = SOURCE,
                   opener: Callable = urllib.request.urlopen, report: Callable[[str], None] = print) -> Path:
    """Download every bundled dataset from `source` (a URL ending in '/', https or file) into `dest`
    as STEM.csv, checking each against `SHA256`; returns `dest`. `report` gets one line per file."""
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise HeadpruneError(f"--fetch {dest}: exists and is not a directory")
    dest.mkdir(parents=True, exist_ok=True)
    base = source if source.endswith("/") else source + "/"
    for stem, expected in SHA256.items():
        target = dest / f"{stem}.csv"
        if target.is_file() and sha256_of(target) == expected:
            report(f"{target.name:22s} already there, checked")
            continue
        url = base + stem
        try:
            with opener(url, timeout=60) as response:
                raw = response.read()
        except OSError as err:  # urllib's URLError and HTTPError are OSErrors
            raise HeadpruneError(f"--fetch: could not download {url} ({err})") from None
        got = hashlib.sha256(raw).hexdigest()
        if got != expected:
            raise HeadpruneError(f"--fetch: {url} is not the expected file (SHA-256 {got[:12]}..., "
                                 f"expected {expected[:12]}...); nothing saved for it")
        # write then rename: an interrupted fetch never leaves a partial file under the real name
        with tempfile.NamedTemporaryFile(dir=dest, prefix=f".{stem}.", delete=False) as handle:
            handle.write(raw)
        os.replace(handle.name, target)
        report(f"{target.name:22s} {len(raw):9d} bytes, checked")
    return dest


__all__ = ["SHA256", "SOURCE", "fetch_datasets", "sha256_of"]
