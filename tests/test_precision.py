"""run.precision = "bf16": the reference loop's adjusting under bf16 autocast (fp32 weights and
Adam state), refused on a CPU without bf16, its scores under their own store keys, a departure."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from headprune import devices
from headprune.base import load_base
from headprune.config import departures, from_dict, paper_config
from headprune.errors import HeadpruneError
from headprune.pipeline import Pipeline
from headprune.progress import RunProgress
from headprune.scorer import Scorer
from headprune.scoring import adjust, encode
from headprune.settings import ScoreSettings
from headprune.store import ResultStore
from headprune.tasks import SeedTask

CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(("flags", "has"), [
    ("flags\t\t: fpu sse2 avx512f avx512_bf16 avx512_vnni", True),
    ("flags\t\t: fpu sse2 amx_bf16 amx_tile", True),
    ("Features\t: fp asimd bf16 i8mm", True),  # Arm
    ("flags\t\t: fpu sse2 avx2 avx512f avx512bw", False),  # AVX-512 without its bf16 instructions
    ("Features\t: fp asimd", False),
])
def test_bf16_support_is_read_from_cpuinfo(tmp_path: Path, flags: str, has: bool) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: Some CPU\n{flags}\n\nprocessor\t: 1\n{flags}\n")
    assert devices.cpu_has_bf16(str(info)) is has
    assert devices.cpu_has_bf16(str(tmp_path / "missing")) is False  # not known: refused


def test_bf16_is_refused_in_one_line_on_a_cpu_without_it(monkeypatch, tmp_path: Path) -> None:
    config = from_dict({"run": {"device": "cpu", "precision": "bf16"}})
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: False)
    with pytest.raises(HeadpruneError) as refused:
        Pipeline(config, tmp_path / "run", progress=RunProgress(enabled=False))
    message = str(refused.value)
    assert message.startswith('run.precision = "bf16": this CPU has no bf16 support') and "\n" not in message
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: True)
    Pipeline(config, tmp_path / "run", progress=RunProgress(enabled=False))  # a CPU with bf16: accepted
    Pipeline(from_dict({"run": {"device": "cpu"}}), tmp_path / "run", progress=RunProgress(enabled=False))
    with pytest.raises(HeadpruneError, match="run.precision must be 'fp32' or 'bf16', got 'fp16'"):
        from_dict({"run": {"precision": "fp16"}})


def test_bf16_is_a_departure_and_fp32_is_the_paper() -> None:
    paper = paper_config()
    assert not any(line.startswith("run.precision") for line in departures(paper, "cpu"))
    bf16 = from_dict({**{k: v for k, v in paper.to_dict().items() if k != "run"},
                      "run": {"engine": "reference", "precision": "bf16"}})
    lines = [line for line in departures(bf16, "cpu") if line.startswith("run.precision")]
    assert lines == ["run.precision = bf16: the adjusting step under bf16 autocast, fp32 weights, Adam state and "
                     "loss (paper: fp32)"]


def test_bf16_adjusting_trains_fp32_weights_otherwise_rounded(tiny_bert_dir: Path) -> None:
    base = load_base(str(tiny_bert_dir), warmup=None)
    ids = encode(base.tokenizer, ["a tweet about a movie i liked a lot"] * 16, 32)
    settings = ScoreSettings(epochs=1, batch_size=8, learning_rate=1e-3)
    trained = {}
    for precision in ("fp32", "bf16"):
        model = copy.deepcopy(base.model)
        adjust(model, base.tokenizer, ids, settings, 1, CPU, precision)
        trained[precision] = {n: p.detach() for n, p in model.named_parameters()}
        assert all(p.dtype == torch.float32 for p in trained[precision].values())  # fp32 master weights
    start = {n: p.detach() for n, p in base.model.named_parameters()}
    def norm(a: dict, b: dict) -> float:
        return sum(float(((a[n] - b[n]) ** 2).sum()) for n in start) ** 0.5

    moved, apart = norm(trained["fp32"], start), norm(trained["bf16"], trained["fp32"])
    assert moved > 0 and 0 < apart < 0.5 * moved  # the same training, rounded otherwise


def test_bf16_scores_have_their_own_store_keys_fp32_keys_unchanged(tiny_bert_dir: Path, tmp_path: Path) -> None:
    base = load_base(str(tiny_bert_dir), warmup=None)
    store = ResultStore(tmp_path / "store.sqlite")
    task = SeedTask((), "person", 1)
    plain = Scorer(base, store, device="cpu")
    fp32 = Scorer(base, store, device="cpu", precision="fp32")
    bf16 = Scorer(base, store, device="cpu", precision="bf16")
    assert fp32.key(task) == plain.key(task) and fp32.settings_key == plain.settings_key
    assert bf16.key(task) != fp32.key(task) and bf16.settings_key["precision"] == "bf16"
    assert bf16.describe() == "scores: reference loop (bf16 autocast)"
    assert plain.describe() == "scores: reference loop"
    assert bf16.context(["person"]).precision == "bf16"
    store.close()
