"""run.precision = "bf16": the reference loop's adjusting under bf16 autocast (fp32 weights and
Adam state), refused on a CPU without bf16, its scores under their own store keys, a departure."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from headprune import devices
from headprune.base import load_base
from headprune.config import from_dict
from headprune.errors import HeadpruneError
from headprune.pipeline import Pipeline
from headprune.progress import RunProgress
from headprune.protocol import departures, paper_config
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


@pytest.fixture(scope="module")
def traced(one_torch_thread, tiny_bert_dir: Path, person_frame) -> dict:
    """`traced_score` of the tiny BERT on 80 tweets of person (40 adjust, 40 classify), fp32 and bf16."""
    import numpy as np
    import pandas as pd

    base = load_base(str(tiny_bert_dir), warmup=None)
    frame = pd.concat([person_frame[person_frame["class"] == c].head(40) for c in ("positive", "negative")])
    ids, labels = encode(base.tokenizer, list(frame["tweet"]), 64), np.asarray(frame["class"])
    settings = ScoreSettings(epochs=1, batch_size=8, learning_rate=1e-3, n_folds=3)
    return {precision: traced_score(base, ids, labels, settings, precision) for precision in ("fp32", "bf16")}


def traced_score(base, ids, labels, settings: ScoreSettings, precision: str) -> dict:
    """One seed of PRUN_ADJ_EVAL (`score_seed`), traced: the dtype of every nn.Linear output per stage
    (adjust, features), each step's loss and its dtype, the dtypes of the gradients, weights and Adam
    state at each optimizer step, the features, the F1."""
    from headprune import scoring

    trace: dict = {"stage": None, "linear": {"adjust": set(), "features": set()}, "losses": [],
                   "loss_dtypes": set(), "state_dtypes": set(), "features": []}

    def in_stage(stage: str, fn):
        def run(*args, **kwargs):
            trace["stage"] = stage
            try:
                return fn(*args, **kwargs)
            finally:
                trace["stage"] = None
        return run

    def loss(*args, real=scoring.masked_lm_loss):
        value = in_stage("adjust", real)(*args)
        trace["losses"].append(float(value.detach()))
        trace["loss_dtypes"].add(value.dtype)
        return value

    def features(*args, real=scoring.features, **kwargs):
        trace["features"].append(in_stage("features", real)(*args, **kwargs))
        return trace["features"][-1]

    def adamw(params, *args, real=scoring.adamw, **kwargs):
        optimizer = real(params, *args, **kwargs)

        def before_step(opt, *_):  # what the step reads (gradients, weights) and updates (Adam state)
            for group in opt.param_groups:
                for p in group["params"]:
                    state = [s for s in opt.state[p].values() if torch.is_tensor(s) and s.dim() > 0]
                    trace["state_dtypes"] |= {p.dtype, p.grad.dtype, *(s.dtype for s in state)}
        optimizer.register_step_pre_hook(before_step)
        return optimizer

    def linear_output(module, _, output):
        if isinstance(module, torch.nn.Linear) and trace["stage"]:
            trace["linear"][trace["stage"]].add(output.dtype)

    hook = torch.nn.modules.module.register_module_forward_hook(linear_output)
    try:
        with pytest.MonkeyPatch.context() as patch:
            # the loss and the optimizer are looked up inside the adjusting step; the features stage is injected
            patch.setattr(scoring, "masked_lm_loss", loss)
            patch.setattr(scoring, "adamw", adamw)
            trace["f1"] = scoring.score_seed(base.model, base.tokenizer, ids, labels, (), 1, settings, CPU,
                                             precision, stages=scoring.Stages(features=features)).f1
    finally:
        hook.remove()
    return trace


def test_bf16_autocast_covers_the_adjusting_step_and_not_the_features(traced: dict) -> None:
    fp32, bf16 = traced["fp32"], traced["bf16"]
    assert fp32["linear"] == {"adjust": {torch.float32}, "features": {torch.float32}}
    # every matrix product of the adjusting step (forward, hence backward) in bf16; the features in fp32
    assert bf16["linear"] == {"adjust": {torch.bfloat16}, "features": {torch.float32}}


def test_bf16_keeps_fp32_weights_gradients_adam_state_and_loss(traced: dict) -> None:
    for precision in ("fp32", "bf16"):
        assert traced[precision]["state_dtypes"] == {torch.float32}, precision
        assert traced[precision]["loss_dtypes"] == {torch.float32}, precision


# The stated tolerance of bf16 against fp32 on the tiny model: each step's MLM loss within 1% (measured:
# ~3e-5), the tweet vectors' cosine at least 0.999 (measured: > 0.99999), the F1 within 0.05 (equal).
LOSS_RTOL, MIN_COSINE, F1_TOLERANCE = 1e-2, 0.999, 0.05


def test_bf16_rounds_the_training_otherwise_and_scores_within_tolerance(traced: dict) -> None:
    import numpy as np

    fp32, bf16 = traced["fp32"], traced["bf16"]
    assert len(fp32["losses"]) == len(bf16["losses"]) == 5  # 40 tweets to adjust on, batches of 8
    losses = np.asarray(fp32["losses"]), np.asarray(bf16["losses"])
    assert (losses[0] != losses[1]).all()  # bf16 ran: even the first step (same weights, same batch) differs
    np.testing.assert_allclose(losses[1], losses[0], rtol=LOSS_RTOL)
    (a,), (b,) = fp32["features"], bf16["features"]
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
    assert not np.array_equal(a, b)  # trained otherwise, so other vectors
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.min() >= MIN_COSINE
    assert abs(bf16["f1"] - fp32["f1"]) <= F1_TOLERANCE
