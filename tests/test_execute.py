"""Executors: Ray gives exactly the in-process scores and chosen models, survives a killed worker,
resumes an interrupted run from the store, and a missing extra is a one-line error.

Everything runs on a tiny random BERT (2 layers x 4 heads, built here) and two 60-row datasets cut
from person.csv; Ray is one local instance (2 CPUs) shared by the module."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from headprune.base import load_base
from headprune.errors import HeadpruneError
from headprune.executors import RAY_MISSING, InProcessExecutor
from headprune.scorer import Scorer
from headprune.search import h1_search, h2_search
from headprune.settings import ScoreSettings
from headprune.store import ResultStore
from headprune.tasks import SeedTask

SETTINGS = ScoreSettings(epochs=1, n_folds=5)
SEEDS = (1, 2)
PRUNED = [(), ((0, 1),), ((0, 0), (0, 1), (1, 2)), ((1, 0), (1, 1), (1, 2), (1, 3))]
ORDER = [(0, 0), (1, 1), (0, 2), (1, 3), (0, 1), (1, 0), (0, 3), (1, 2)]  # most important first


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny model directory and two 60-row datasets (30 per class; different tweets)."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from headprune.data import resolve_data_dir
    from headprune.models import resolve_model_path

    root = tmp_path_factory.mktemp("execute")
    model_dir = root / "tiny-bert"
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    torch.manual_seed(0)
    # initializer_range 0.2 (not 0.02): with the default the random encoder's features barely depend
    # on the heads and every pruned set scores the same F1, which would make equality checks vacuous.
    config = BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, hidden_size=32,
                        num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                        max_position_embeddings=130, initializer_range=0.2)
    BertForMaskedLM(config).eval().save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    person = pd.read_csv(resolve_data_dir() / "person.csv", dtype=str, keep_default_na=False)
    out = {"model": model_dir}
    for name, rows in (("a", slice(0, 30)), ("b", slice(30, 60))):
        frame = pd.concat([person[person["class"] == c].iloc[rows] for c in ("positive", "negative")])
        out[name] = root / f"{name}.csv"
        frame.to_csv(out[name], index=False)
    return out


@pytest.fixture(scope="module")
def base(files):
    return load_base(str(files["model"]), warmup=None)


@pytest.fixture(scope="module")
def tasks(files) -> list[SeedTask]:
    return [SeedTask(tuple(p), str(files["a"]), s) for p in PRUNED for s in SEEDS]


def make_scorer(base, store_path: Path, executor=None) -> Scorer:
    return Scorer(base, ResultStore(store_path), SETTINGS, seeds=SEEDS, device="cpu", executor=executor)


def stored(store: ResultStore) -> dict[tuple, tuple]:
    """{(pruned, dataset hash, seed): (f1, n_params, size_bytes, device)} of every stored score."""
    return {(r["pruned"], r["dataset_hash"], r["seed"]): (r["f1"], r["n_params"], r["size_bytes"], r["device"])
            for r in store.all_scores()}


def searches(scorer: Scorer, files) -> dict:
    datasets = [str(files["a"]), str(files["b"])]
    return {"h1": h1_search(ORDER, datasets, scorer.evaluate, k_values=[0, 2, 4]),
            "h2": h2_search(ORDER, datasets, scorer.evaluate, group_size=2)}


@pytest.fixture(scope="module")
def reference(base, files, tasks, tmp_path_factory) -> dict:
    """In process (torch's default threads): the stored scores of `tasks` and of both searches."""
    scorer = make_scorer(base, tmp_path_factory.mktemp("inproc") / "store.sqlite", InProcessExecutor())
    scorer.run(tasks)
    only_tasks = stored(scorer.store)
    chosen = searches(scorer, files)
    return {"tasks": only_tasks, "all": stored(scorer.store), "searches": chosen}


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray instance (2 CPUs) for the module, started by a RayExecutor (so its close()
    shuts it down); the other executors of the module join it and leave it running."""
    ray = pytest.importorskip("ray")
    from headprune.executors import RayExecutor

    saved = os.environ.pop("RAY_ADDRESS", None)
    owner = RayExecutor(num_cpus=2)
    owner._ensure_started()
    assert owner.started and ray.is_initialized()
    yield ray
    owner.close()
    assert not ray.is_initialized()
    if saved is not None:
        os.environ["RAY_ADDRESS"] = saved


# ----------------------------------------------------------------------------- helpers: Ray workers


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    return children


def busy_ray_workers() -> list[int]:
    """PIDs of this test process's own Ray workers that are running an evaluation right now
    (process title `ray::_evaluate`); other users' Ray processes are never descendants of ours."""
    children, found, todo = _children(), [], [os.getpid()]
    while todo:
        for pid in children.get(todo.pop(), []):
            todo.append(pid)
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if title.startswith("ray::_evaluate"):
                found.append(pid)
    return found


# ----------------------------------------------------------------------------- tests


def test_workers_rebuild_a_model_that_scores_as_the_original(base, files, tmp_path):
    """What the Ray executor sends its workers (`checkpoint.model_files`: bytes, no pickled
    transformers object) rebuilds, here without Ray, into a model with the base model's fingerprint
    that gives its scores exactly, in the reference loop and in a pack of the batched engine."""
    import pickle
    import pickletools

    from headprune.checkpoint import model_files
    from headprune.engine import BatchedExecutor, EngineOptions
    from headprune.executors.ray_executor import RebuiltModel
    from headprune.models import fingerprint
    from headprune.tasks import EvalContext

    payload = model_files(base.model, base.tokenizer)
    opcodes = {op.name for op, _arg, _pos in pickletools.genops(pickle.dumps(payload, protocol=5))}
    assert not {"GLOBAL", "STACK_GLOBAL", "REDUCE"} & opcodes  # names no class to import: str -> bytes only
    rebuilt = RebuiltModel(payload)
    assert rebuilt.model is not base.model and fingerprint(rebuilt.model) == base.fingerprint
    here = make_scorer(base, tmp_path / "unused.sqlite", InProcessExecutor()).context([str(files["a"])])
    there = EvalContext(rebuilt.model, rebuilt.tokenizer, here.datasets, here.settings, here.device, score=here.score)

    def same(score):  # everything but the seconds it took
        return score.f1, score.n_params, score.size_bytes, score.device

    for pruned in PRUNED[1:3]:
        task = SeedTask(pruned, str(files["a"]), 1)
        assert same(there.compute(task)) == same(here.compute(task))
    pack = [SeedTask(p, str(files["a"]), 2) for p in PRUNED[:3]]
    options = EngineOptions(pack=True, pack_models=3, svm_workers=1, prep_workers=0)
    expected = {t: same(s) for t, s in BatchedExecutor(options).run(here, pack)}
    assert {t: same(s) for t, s in BatchedExecutor(options).run(there, pack)} == expected


def test_missing_ray_extra_is_a_one_line_error(monkeypatch):
    from headprune.config import Config
    from headprune.executors import RayExecutor, make_executor

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(HeadpruneError) as caught:
        RayExecutor()
    assert str(caught.value) == RAY_MISSING == "the Ray executor needs the extra: pip install 'headprune[ray]'"
    config = Config()
    config.run.executor = "ray"
    with pytest.raises(HeadpruneError, match="needs the extra"):
        make_executor(config)


def test_ray_gives_the_in_process_scores_and_chosen_models(ray_session, base, files, tasks, reference, tmp_path):
    from headprune.executors import RayExecutor

    executor = RayExecutor()  # joins the module's Ray session
    scorer = make_scorer(base, tmp_path / "store.sqlite", executor)
    scorer.run(tasks)
    assert stored(scorer.store) == reference["tasks"]
    assert executor.submitted == len(tasks)
    assert {v[3] for v in stored(scorer.store).values()} == {"cpu"}  # workers ran on CPU, as the driver

    assert searches(scorer, files) == reference["searches"]
    assert stored(scorer.store) == reference["all"]
    # The base model went into the object store once, each dataset once, whatever the batches.
    assert sorted(key[0] for key in executor._shared) == ["data", "data", "model"]
    assert len({v[0] for v in reference["all"].values()}) > 3  # the scores do depend on the pruned set

    executor.close()
    assert ray_session.is_initialized()  # not ours to shut down
    with pytest.raises(HeadpruneError, match="no GPUs"):
        RayExecutor()._gpu_share("cuda")


def test_a_killed_worker_is_retried_and_results_are_identical(ray_session, base, tasks, reference, tmp_path):
    from headprune.executors import RayExecutor

    killed: list[int] = []

    def kill_one_busy_worker(task, score, cached):
        if killed:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            busy = busy_ray_workers()
            if busy:
                os.kill(busy[0], signal.SIGKILL)
                killed.append(busy[0])
                return
            time.sleep(0.05)

    executor = RayExecutor(max_retries=3)
    scorer = make_scorer(base, tmp_path / "store.sqlite", executor)
    scorer.on_result = kill_one_busy_worker
    scorer.run(tasks)
    assert killed, "no Ray worker was running an evaluation after the first result"
    assert stored(scorer.store) == reference["tasks"]


def test_failures_name_the_task(ray_session, base, files, tmp_path):
    from headprune.executors import RayExecutor

    def always_dies(context, task):
        os._exit(1)

    def always_raises(context, task):
        raise ValueError("boom")

    task = SeedTask(((0, 1),), str(files["a"]), 7)
    scorer = make_scorer(base, tmp_path / "store.sqlite", RayExecutor(max_retries=1, run_task=always_dies))
    with pytest.raises(HeadpruneError) as caught:
        scorer.run([task])
    message = str(caught.value)
    assert message.startswith("evaluation failed on Ray after 2 tries: ")
    assert f"dataset {files['a']}, seed 7, pruned [[0, 1]]: " in message and "\n" not in message

    executor = RayExecutor(max_retries=3, run_task=always_raises)
    scorer.executor = executor
    with pytest.raises(HeadpruneError, match=r"evaluation failed on Ray: dataset .*seed 7.*: ValueError: boom$"):
        scorer.run([task])
    assert executor.submitted == 1
    assert scorer.store.count_scores() == 0


DRIVER = """
import os, sys
os.environ["HF_HUB_OFFLINE"] = "1"; os.environ["TRANSFORMERS_OFFLINE"] = "1"
from headprune.executors import RayExecutor
from headprune.base import load_base
from headprune.scorer import Scorer
from headprune.settings import ScoreSettings
from headprune.tasks import SeedTask
from headprune.store import ResultStore

address, model, data, store = sys.argv[1:5]
pruned = {pruned!r}
base = load_base(model, warmup=None)
scorer = Scorer(base, ResultStore(store), ScoreSettings(epochs=1, n_folds=5), seeds={seeds!r}, device="cpu",
                executor=RayExecutor(address=address))
scorer.run([SeedTask(tuple(p), data, s) for p in pruned for s in {seeds!r}])
"""


def test_an_interrupted_ray_run_resumes_without_recomputing(ray_session, base, files, tasks, reference, tmp_path):
    from headprune.executors import RayExecutor

    store_path = tmp_path / "store.sqlite"
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(DRIVER.format(pruned=PRUNED, seeds=SEEDS)))
    address = ray_session.get_runtime_context().gcs_address
    driver = subprocess.Popen([sys.executable, str(script), address, str(files["model"]), str(files["a"]),
                               str(store_path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    probe = ResultStore(store_path)
    try:
        deadline = time.monotonic() + 240
        while probe.count_scores() < 1:
            assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the Ray driver stored no score in time"
            time.sleep(0.05)
        driver.send_signal(signal.SIGKILL)  # the driver dies mid-run, without any cleanup
        driver.wait(30)
    finally:
        if driver.poll() is None:
            driver.kill()
        driver.stderr.close()
    before = {(r["pruned"], r["seed"]): r["created"] for r in probe.all_scores()}
    probe.close()
    assert 1 <= len(before) < len(tasks), f"{len(before)} of {len(tasks)} scores stored before the kill"

    executor = RayExecutor()
    scorer = make_scorer(base, store_path, executor)
    scorer.run(tasks)
    assert executor.submitted == len(tasks) - len(before)  # stored scores were not recomputed
    rows = scorer.store.all_scores()
    assert {(r["pruned"], r["seed"]): r["created"] for r in rows if (r["pruned"], r["seed"]) in before} == before
    assert stored(scorer.store) == reference["tasks"]


def test_ray_runs_units_of_the_batched_engine(ray_session, base, files, tasks, tmp_path):
    """`engine="batched"`: one Ray task per pack (here on CPU workers), the same scores as the
    batched engine in process with the same packs, stored under the batched engine's tag."""
    from headprune.engine import BatchedExecutor, EngineOptions
    from headprune.executors import RayExecutor

    options = EngineOptions(pack=True, pack_models=3, svm_workers=1, prep_workers=0)
    executor = RayExecutor(engine="batched", engine_options=options)
    assert executor.store_tag == "batched-packed" and RayExecutor(engine="auto").store_tag is None  # no GPUs
    scorer = make_scorer(base, tmp_path / "ray.sqlite", executor)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the Ray workers (1 CPU each)
    try:
        here = make_scorer(base, tmp_path / "here.sqlite", BatchedExecutor(options))
        expected = here.run(tasks)
    finally:
        torch.set_num_threads(threads)
    got = scorer.run(tasks)
    assert executor.submitted == -(-len(tasks) // 3)  # 8 tasks of one dataset: packs of 3, 3, 2
    assert {t: s.f1 for t, s in got.items()} == pytest.approx({t: s.f1 for t, s in expected.items()}, abs=1e-9)
    assert all(got[t].n_params == expected[t].n_params for t in tasks)
    keys = {r["settings"] for r in scorer.store.all_scores()}
    assert len(keys) == 1 and '"engine": "batched-packed"' in next(iter(keys)).replace('":"', '": "')
    # Resuming with some of every pack stored: the packs of the whole batch are trained again and
    # only the missing tasks come back, with the uninterrupted run's scores.
    left = tasks[::3]
    before = executor.submitted
    resumed = dict(executor.run(scorer.context([tasks[0].dataset]), left, batch=tasks))
    assert sorted(resumed, key=tasks.index) == left and executor.submitted - before == 3
    assert {t: s.f1 for t, s in resumed.items()} == pytest.approx({t: expected[t].f1 for t in left}, abs=1e-9)
    with pytest.raises(HeadpruneError, match="engine must be"):
        RayExecutor(engine="fast")
