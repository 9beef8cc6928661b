"""`RayExecutor`: evaluations as Ray tasks (a local Ray instance or a cluster), one per SeedTask
(the reference loop) or one per unit of the batched engine (a pack, or one candidate's seeds).

Like every executor (`tasks.Executor`) it yields `(task, score)` pairs as they complete and never
touches the results store: the caller writes every score the moment it arrives."""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..checkpoint import load_model_files, model_files
from ..errors import HeadpruneError
from ..scoring import run_task
from ..tasks import EvalContext, SeedScore, SeedTask, StopRequests

RAY_MISSING = "the Ray executor needs the extra: pip install 'headprune[ray]'"
UNIT_MODELS = 64  # models per unit of the batched engine on Ray when `pack_models` is not set


# ----------------------------------------------------------------------------- Ray


def _import_ray():
    try:
        import ray
    except ImportError:
        raise HeadpruneError(RAY_MISSING) from None
    return ray


# Worker side: what this worker process has already fetched from the object store, by object id
# (the base model + tokenizer once, each tokenized dataset once). Bounded, least recently used out.
_WORKER_CACHE: collections.OrderedDict = collections.OrderedDict()
_WORKER_CACHE_SIZE = 8


def _fetch(key: str, holder: list, build: Callable | None = None):
    """The object behind `holder[0]` (an ObjectRef, wrapped in a list so Ray does not resolve it
    for every task; `key` is its hex id), deserialized (and turned into what `build` makes of it)
    at most once per worker process."""
    if key in _WORKER_CACHE:
        _WORKER_CACHE.move_to_end(key)
        return _WORKER_CACHE[key]
    import ray

    value = ray.get(holder[0])
    if build is not None:
        value = build(value)
    _WORKER_CACHE[key] = value
    while len(_WORKER_CACHE) > _WORKER_CACHE_SIZE:
        _WORKER_CACHE.popitem(last=False)
    return value


class RebuiltModel:
    """The base model and tokenizer rebuilt in this process from `checkpoint.model_files` (what the
    driver puts in the object store instead of the transformers objects themselves, which a fresh
    worker process may fail to unpickle). The rebuilt model is constructed here, so transformers'
    per-instance set-up (e.g. 5.x's registry of the outputs a model can capture, without which
    `output_hidden_states=True` returns None) runs as for any loaded model. The files stay in a
    temporary directory as long as this object lives: it is the tokenizer's `headprune_source`."""

    def __init__(self, files: dict[str, bytes]):
        import tempfile

        self._directory = tempfile.TemporaryDirectory(prefix="headprune-worker-model-")
        self.model, self.tokenizer = load_model_files(files, self._directory.name)


def _model(model_key: str, model_ref: list) -> tuple[Any, Any]:
    """(base model, tokenizer) of `model_ref` (the files of `checkpoint.model_files`), rebuilt once
    per worker process."""
    rebuilt = _fetch(model_key, model_ref, build=RebuiltModel)
    return rebuilt.model, rebuilt.tokenizer


def _evaluate(
    model_key: str,
    model_ref: list,
    data_key: str,
    data_ref: list,
    dataset: str,
    settings,
    use_gpu: bool,
    threads: int,
    task: SeedTask,
    function: Callable = run_task,
) -> SeedScore:
    """One SeedTask on a Ray worker. The device is the worker's own: CUDA when Ray gave this task a
    GPU share, else CPU (a CPU task never touches CUDA, whatever the driver runs on)."""
    import ray
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    device = "cpu"
    if use_gpu and ray.get_gpu_ids():
        if not torch.cuda.is_available():
            import socket

            raise HeadpruneError(f"Ray gave this task a GPU on {socket.gethostname()}, but torch there has no CUDA")
        device = "cuda"  # Ray set CUDA_VISIBLE_DEVICES to this task's GPU
    base_model, tokenizer = _model(model_key, model_ref)
    data = _fetch(data_key, data_ref)
    context = EvalContext(base_model, tokenizer, {dataset: data}, settings, device, score=function)
    try:
        return function(context, task)
    finally:
        if device == "cuda":
            torch.cuda.empty_cache()  # give the memory back to the tasks sharing this GPU


_UNIT_EXECUTORS: dict = {}  # worker side: one BatchedExecutor per options (its batch-drawing processes live on)


def _evaluate_unit(
    model_key: str,
    model_ref: list,
    data_keys: dict[str, str],
    data_refs: dict[str, list],
    settings,
    use_gpu: bool,
    threads: int,
    tasks: list[SeedTask],
    options,
    unit: list[SeedTask] | None = None,
) -> list[tuple[SeedTask, SeedScore]]:
    """A unit of the batched engine on a Ray worker (a pack of candidates, or one candidate's seeds):
    `engine.BatchedExecutor` on the worker's own device (its whole GPU). `unit`: the whole unit when
    some of its tasks are stored already (they train again with the others, unscored)."""
    import ray
    import torch

    from ..engine import BatchedExecutor

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    device = "cuda" if use_gpu and ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
    base_model, tokenizer = _model(model_key, model_ref)
    datasets = {name: _fetch(data_keys[name], data_refs[name]) for name in data_keys}
    context = EvalContext(base_model, tokenizer, datasets, settings, device, score=run_task)
    executor = _UNIT_EXECUTORS.setdefault(options, BatchedExecutor(options))
    try:
        return list(executor.run(context, tasks, batch=unit))
    finally:
        if device == "cuda":
            torch.cuda.empty_cache()


class RayExecutor(StopRequests):
    """Runs each SeedTask as a Ray task; results are yielded as they complete.

    - `address`: None starts a local Ray instance (`num_cpus` CPUs, default all) when the first
      tasks arrive; "auto" or "HOST:PORT" joins a running cluster at once. If Ray is already
      initialised in this process, that session is used.
    - `num_gpus_per_task`: the GPU share of one task when the run's device is CUDA (default 0.25:
      four evaluations share a GPU); CPU runs request no GPU.
    - `cpus_per_task`: CPUs (and torch threads) of one task (default 1).
    - `max_retries`: re-runs of a task whose worker process died (killed, out of memory, node
      lost); a Python exception in the evaluation is not retried.
    - `run_task`: the function that scores one task on a worker (tests replace it).
    - `engine`: "reference" (one Ray task per evaluation, `run_task`), "batched" (one Ray task per
      unit of the batched engine: a pack of `engine_options.pack_models` (default `UNIT_MODELS`)
      models of different candidates with `engine_options.pack`, else one candidate's seeds; each
      unit gets a whole GPU and `gpu_task_cpus` CPUs, drawing its batches in that many processes
      less one), or "auto": batched when the run's `device` gets GPUs, reference otherwise.

    The base model (as `checkpoint.model_files`: bytes, never pickled transformers objects) and each
    tokenized dataset go into the object store once per executor; each worker process rebuilds the
    model and deserializes each dataset once, not once per task. `close()` shuts Ray down only if this
    executor started it."""

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        num_cpus: int | None = None,
        num_gpus_per_task: float | None = None,
        max_retries: int = 3,
        cpus_per_task: int = 1,
        run_task: Callable[[EvalContext, SeedTask], SeedScore] = run_task,
        engine: str = "reference",
        engine_options=None,
        device: str = "auto",
        gpu_task_cpus: int = 4,
    ):
        self.ray = _import_ray()
        if max_retries < 0:
            raise HeadpruneError(f"Ray executor: max_retries must be >= 0, got {max_retries}")
        if num_gpus_per_task is not None and not num_gpus_per_task > 0:
            raise HeadpruneError(f"Ray executor: num_gpus_per_task must be > 0, got {num_gpus_per_task}")
        self.address = address or None
        self.num_cpus = num_cpus
        self.num_gpus_per_task = num_gpus_per_task
        self.max_retries = int(max_retries)
        self.cpus_per_task = max(1, int(cpus_per_task))
        self.run_task = run_task
        if engine not in ("reference", "batched", "auto"):
            raise HeadpruneError(f"Ray executor: engine must be reference, batched or auto, got '{engine}'")
        self.engine = engine
        if engine_options is None:
            from ..engine import EngineOptions

            engine_options = EngineOptions()
        self.engine_options = engine_options
        self.device = device
        self.gpu_task_cpus = max(1, int(gpu_task_cpus))
        self.started = False  # this executor called ray.init (so close() shuts Ray down)
        self._remote_unit = None
        self.submitted = 0  # tasks submitted to Ray so far (Ray's own retries not counted)
        self._shared: dict[tuple, tuple[object, object]] = {}  # key -> (the objects it names, kept alive; the ref)
        self._remote = None
        if self.address is not None and not self.ray.is_initialized():
            _check_reachable(self.address)
            self._ensure_started()  # join the cluster now: a wrong address fails before any work

    # -------------------------------------------------------------- Ray session
    def _ensure_started(self) -> None:
        ray = self.ray
        if not ray.is_initialized():
            kwargs: dict = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False}
            if self.address is None and self.num_cpus is not None:
                kwargs["num_cpus"] = int(self.num_cpus)
            try:
                ray.init(address=self.address, **kwargs)
            except (ConnectionError, ValueError, RuntimeError) as error:
                where = f"connect to the Ray cluster at {self.address}" if self.address else "start a local Ray"
                hint = (
                    (
                        " (a cluster with token authentication needs RAY_AUTH_MODE=token and its token here; "
                        "see docs/RAY.md)"
                    )
                    if self.address and self.address != "auto"
                    else ""
                )
                raise HeadpruneError(f"could not {where}: {_first_line(error)}{hint}") from None
            self.started = True
        if self._remote is None:
            self._remote = ray.remote(_evaluate)
            self._remote_unit = ray.remote(_evaluate_unit)

    def _put(self, key: tuple, make: Callable[[], object], named: object):
        """The object-store ref of `key`, put once. `named`: the objects whose ids `key` holds, kept
        alive with the ref so that identity keys stay valid (what `make` returns need not be)."""
        if key not in self._shared:
            self._shared[key] = (named, self.ray.put(make()))
        return self._shared[key][1]

    def _put_model(self, context: EvalContext):
        """The ref of the context's base model and tokenizer as `checkpoint.model_files` (config,
        weights, tokenizer files and pooler state as bytes, rebuilt by each worker process once)."""
        named = (context.base_model, context.tokenizer)
        return self._put(("model", id(context.base_model), id(context.tokenizer)),
                         lambda: model_files(context.base_model, context.tokenizer), named)

    def _put_data(self, context: EvalContext, names) -> dict:
        """{dataset: ref of its (token ids, labels)}, each put once."""
        refs = {}
        for name in sorted(names):
            ids, labels = context.datasets[name]
            refs[name] = self._put(("data", name, id(ids), id(labels)), lambda ids=ids, labels=labels: (ids, labels),
                                   (ids, labels))
        return refs

    def _gpu_share(self, device: str) -> float:
        """GPUs to request per task: a share when the run's device is CUDA, none for CPU."""
        wants_gpu = device.startswith("cuda") or (device == "auto" and self.ray.cluster_resources().get("GPU", 0) > 0)
        if not wants_gpu:
            return 0.0
        if self.ray.cluster_resources().get("GPU", 0) <= 0:
            raise HeadpruneError(f"device {device}: the Ray cluster has no GPUs (use --device cpu, or add GPU nodes)")
        return 0.25 if self.num_gpus_per_task is None else float(self.num_gpus_per_task)

    def batched(self, device: str | None = None) -> bool:
        """Whether evaluations run as units of the batched engine (see `engine`)."""
        if self.engine != "auto":
            return self.engine == "batched"
        self._ensure_started()
        return self._gpu_share(str(device or self.device)) > 0

    @property
    def store_tag(self) -> str | None:
        """The `engine` entry of store keys (as `engine.BatchedExecutor`'s); None for the reference loop."""
        if not self.batched():
            return None
        return "batched-packed" if self.engine_options.pack else "batched"

    def store_entries(self, model, device: str | None = None) -> dict[str, Any]:
        """What its scores' store keys carry beyond the score settings: {} for the reference loop;
        for units of the batched engine, `engine.batched_store_entries` on the workers' device (a
        GPU when the run's device gets one, hence bf16), with the pack size the driver plans units
        of (`pack_models`, else units of `UNIT_MODELS` that each worker packs as fits its GPU: then
        the key says so, as which models share dropout streams depends on that GPU)."""
        if not self.batched(device):
            return {}
        import torch

        from ..engine import batched_store_entries

        options = self.engine_options
        where = str(device or self.device)
        if where != "cpu":
            self._ensure_started()  # the cluster's GPUs decide
        worker = torch.device("cuda" if self._gpu_share(where) > 0 else "cpu")
        size: int | str = options.pack_models or f"units of {UNIT_MODELS}, packed as fit on each worker"
        return batched_store_entries(options, model, worker, size)

    @property
    def plans_batch(self) -> bool:
        """The batched engine's units are planned over the whole batch (see `engine.plan_units`)."""
        return self.batched()

    # -------------------------------------------------------------- running
    def run(self, context: EvalContext, tasks: Sequence[SeedTask], batch: Sequence[SeedTask] | None = None
            ) -> Iterator[tuple[SeedTask, SeedScore]]:
        """Scores of `tasks`, as Ray finishes them. `batch`: the whole request (stored tasks
        included), from which the batched engine's units are planned (`engine.plan_units`)."""
        tasks = list(tasks)
        if not tasks:
            return
        self._ensure_started()
        if self.batched(str(context.device)):
            yield from self._run_units(context, tasks, batch)
            return
        ray = self.ray
        num_gpus = self._gpu_share(str(context.device))
        model_ref = self._put_model(context)
        data_refs = self._put_data(context, {t.dataset for t in tasks})
        remote = self._remote.options(
            num_cpus=self.cpus_per_task, num_gpus=num_gpus, max_retries=self.max_retries, retry_exceptions=False
        )
        # A bounded window of tasks in flight (refilled as results arrive): Ray's queue stays short,
        # `ray.wait` stays cheap for H1's thousands of candidates, and an interrupt cancels little.
        window = max(16, 2 * int(ray.cluster_resources().get("CPU", 1)))

        def submit(task: SeedTask):
            data_ref = data_refs[task.dataset]
            return remote.remote(model_ref.hex(), [model_ref], data_ref.hex(), [data_ref], task.dataset,
                                 context.settings, num_gpus > 0, self.cpus_per_task, task, self.run_task)

        for task, ref in self._windowed(tasks, submit, window):
            yield task, self._result(ref, task)

    def _windowed(self, items: Sequence, submit: Callable, window: int) -> Iterator[tuple[object, object]]:
        """(item, finished ref) as Ray finishes them, with at most `window` items in flight."""
        ray = self.ray
        queue = collections.deque(items)
        pending: dict = {}
        try:
            while (queue and not self.stop_requested) or pending:
                while queue and len(pending) < window and not self.stop_requested:
                    item = queue.popleft()
                    pending[submit(item)] = item
                    self.submitted += 1
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    yield pending.pop(ref), ref
        finally:
            for ref in pending:  # the caller stopped early (error, interrupt): drop what is left
                with contextlib.suppress(Exception):  # best effort; the task may just have finished
                    ray.cancel(ref)  # not force=True: on Ray 2.60 that crashed the driver on Ctrl-C

    def _run_units(self, context: EvalContext, tasks: list[SeedTask], batch: Sequence[SeedTask] | None = None
                   ) -> Iterator[tuple[SeedTask, SeedScore]]:
        """The batched engine's units as Ray tasks, a whole GPU each (none on a CPU cluster)."""
        import dataclasses

        from ..engine import plan_units

        ray = self.ray
        gpus = 1.0 if self._gpu_share(str(context.device)) > 0 else 0.0
        cpus = self.gpu_task_cpus if gpus else self.cpus_per_task
        options = self.engine_options
        if gpus and options.prep_workers is None:
            options = dataclasses.replace(options, prep_workers=max(0, cpus - 1))
        units = plan_units(tasks, context.datasets, context.settings, options, options.pack_models or UNIT_MODELS,
                           batch)
        wanted = set(tasks)
        unique = [t for unit in units for t in unit]
        model_ref = self._put_model(context)
        data_refs = self._put_data(context, {t.dataset for t in unique})
        remote = self._remote_unit.options(num_cpus=cpus, num_gpus=gpus, max_retries=self.max_retries,
                                           retry_exceptions=False)
        resources = ray.cluster_resources()
        window = max(1, 2 * int(resources.get("GPU", 0) if gpus else resources.get("CPU", 1) // cpus))

        def submit(unit: list[SeedTask]):
            names = sorted({t.dataset for t in unit})
            scored = [t for t in unit if t in wanted]
            return remote.remote(model_ref.hex(), [model_ref], {n: data_refs[n].hex() for n in names},
                                 {n: [data_refs[n]] for n in names}, context.settings, gpus > 0, cpus, scored, options,
                                 unit if len(scored) < len(unit) else None)

        for unit, ref in self._windowed(units, submit, window):
            yield from self._result(ref, unit[0], len(unit))

    def _result(self, ref, task: SeedTask, unit_size: int = 0):
        ray = self.ray
        exceptions = ray.exceptions
        what = f"dataset {task.dataset}, seed {task.seed}, pruned {[list(h) for h in task.pruned]}"
        if unit_size > 1:
            what = f"a unit of {unit_size} evaluations ({what}, ...)"
        try:
            return ray.get(ref)
        except exceptions.RayTaskError as error:  # a Python exception in the evaluation: not retried
            cause = error.cause if isinstance(getattr(error, "cause", None), BaseException) else error
            raise HeadpruneError(
                f"evaluation failed on Ray: {what}: {type(cause).__name__}: {_first_line(cause)}"
            ) from cause
        except exceptions.RayError as error:  # the worker died (killed, out of memory, node lost) every try
            raise HeadpruneError(
                f"evaluation failed on Ray after {self.max_retries + 1} tries: {what}: "
                f"{type(error).__name__}: {_first_line(error)}"
            ) from error

    def close(self) -> None:
        """Forget the shared objects; shut Ray down if this executor started it."""
        self._shared.clear()
        self._remote = None
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()
        self.started = False


def _check_reachable(address: str) -> None:
    """Fail at once, in one line, when a HOST:PORT address does not answer (Ray itself would keep
    retrying for minutes). "auto" and ray:// addresses are left to Ray."""
    import socket

    if address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise HeadpruneError(f"--address {address}: expected auto or HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as error:
        raise HeadpruneError(
            f"could not connect to the Ray cluster at {address}: "
            f"{error.strerror or error} (is `ray start --head` running there?)"
        ) from None


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


__all__ = ["RAY_MISSING", "RayExecutor"]
