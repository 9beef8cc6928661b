"""The pruned model outside PyTorch: an ONNX graph of its encoder (or classifier), run by onnxruntime.

`export_onnx` writes the graph with PyTorch's standard exporter (`torch.onnx.export`, the dynamo
path: it traces the modules as they are, so every layer keeps its own number of heads) and checks
onnxruntime's outputs against PyTorch's before it returns. `save_onnx` writes an ONNX directory:
`model.onnx`, the tokenizer files and `headprune-onnx.json` (format, kind, labels, the kept-heads map
and the config). `load_onnx` gives back an `OnnxModel`, called like the PyTorch model.

The graph: inputs `input_ids` and `attention_mask`, int64 of shape (batch, sequence), both axes
dynamic; output `last_hidden_state` (batch, sequence, hidden) for an encoder, `logits` (batch,
labels) for a classifier. onnx, onnxscript and onnxruntime come with the extra `headprune[onnx]`."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import ONNX_META_FILE, is_onnx_dir, load_saved_tokenizer, save_tokenizer
from .errors import HeadpruneError
from .models import max_length
from .scoring import encode, pad_batch
from .surgery import kept_heads, original_shape, pruned_heads

FORMAT = "headprune-onnx/1"
ONNX_FILE = "model.onnx"
INPUTS = ("input_ids", "attention_mask")
OUTPUTS = {"encoder": "last_hidden_state", "classifier": "logits"}
EXTRA = 'pip install "headprune[onnx]"'
TOLERANCE = 1e-4  # largest |onnxruntime - PyTorch| accepted when checking an export
# Example inputs of the export and of its check: two lengths, so the mask has padding.
EXAMPLE_TEXTS = (
    "someuser big fan of natalie portman since closer, loved her in that movie",
    "i hate mondays someurl",
    "colin firth better win the oscar. ffffffffascinating!",
)


def require(module: str):
    """Import one of the extra's packages, or fail with one line naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise HeadpruneError(f"ONNX needs the package {module}, which is not installed: {EXTRA}") from None


def require_export() -> None:
    """Fail with one line naming the extra unless every package an export uses is installed
    (the exporter needs onnx and onnxscript; the export is checked with onnxruntime)."""
    for module in ("onnx", "onnxscript", "onnxruntime"):
        require(module)


# ----------------------------------------------------------------------------- exporting


class _Graph(nn.Module):
    """What the graph computes: (input_ids, attention_mask) -> one output tensor of the model."""

    def __init__(self, model: nn.Module, output: str):
        super().__init__()
        self.model = model
        self.output = output

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return getattr(self.model(input_ids=input_ids, attention_mask=attention_mask), self.output)


def graph_of(model: nn.Module, kind: str) -> _Graph:
    """The module to export: the base model of a masked-LM model (`kind` "encoder") or the whole
    sequence classifier ("classifier")."""
    if kind not in OUTPUTS:
        raise ValueError(f"kind must be one of {', '.join(OUTPUTS)}, got {kind!r}")
    return _Graph(model.base_model if kind == "encoder" else model, OUTPUTS[kind]).eval()


def example_inputs(tokenizer, config, texts=EXAMPLE_TEXTS) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of `texts`, tokenized and padded as `headprune predict` does."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return pad_batch(encode(tokenizer, list(texts), max_length(tokenizer, config)), pad_id)


def export_onnx(model: nn.Module, tokenizer, path: str | os.PathLike, kind: str) -> Path:
    """Write the ONNX graph of `model` (see the module docstring) to `path`, weights inside the file.

    Raises HeadpruneError when the extra is missing, or when onnxruntime's outputs differ from
    PyTorch's by more than TOLERANCE on example tweets (batch sizes and lengths other than traced)."""
    require_export()
    path = Path(path)
    graph = graph_of(model, kind)
    example = example_inputs(tokenizer, model.config, EXAMPLE_TEXTS[:2])
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    axes = {0: batch, 1: sequence}
    # The exporter reports every step and unused optional converters (torchvision's) through
    # warnings and logging; a successful export is checked below, so they are kept off the terminal.
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                example,
                str(path),
                input_names=list(INPUTS),
                output_names=[graph.output],
                dynamic_shapes={name: axes for name in INPUTS},
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    finally:
        logger.setLevel(level)
    check_export(graph, OnnxModel(path, model.config, graph.output), tokenizer)
    return path


def check_export(graph: _Graph, onnx_model: OnnxModel, tokenizer) -> float:
    """The largest |onnxruntime - PyTorch| over example batches of other shapes than the traced one;
    above TOLERANCE it is an error (the graph would be silently wrong)."""
    worst = 0.0
    for texts in (EXAMPLE_TEXTS, EXAMPLE_TEXTS[1:2]):
        input_ids, attention = example_inputs(tokenizer, onnx_model.config, texts)
        with torch.no_grad():
            expected = graph(input_ids, attention)
        got = getattr(onnx_model(input_ids=input_ids, attention_mask=attention), graph.output)
        worst = max(worst, float((got - expected).abs().max()))
    if not worst <= TOLERANCE:
        raise HeadpruneError(f"the ONNX export differs from the PyTorch model by {worst:.2e} (> {TOLERANCE:g})")
    return worst


def save_onnx(model: nn.Module, tokenizer, directory: str | os.PathLike, kind: str, extra: dict | None = None) -> Path:
    """Write an ONNX directory: `model.onnx`, the tokenizer files, `headprune-onnx.json`."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise HeadpruneError(f"--out {directory}: exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    export_onnx(model, tokenizer, directory / ONNX_FILE, kind)
    save_tokenizer(tokenizer, directory)
    n_layers, n_heads = original_shape(model.config)
    meta = {
        "format": FORMAT,
        "kind": kind,
        "inputs": list(INPUTS),
        "output": OUTPUTS[kind],
        "model_type": model.config.model_type,
        "original_layers": n_layers,
        "heads_per_layer": n_heads,
        "kept": {str(k): v for k, v in kept_heads(model).items()},
        "pruned": [list(p) for p in pruned_heads(model)],
        **(extra or {}),
        "config": model.config.to_dict(),
    }
    (directory / ONNX_META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return directory


# ----------------------------------------------------------------------------- running


class OnnxModel:
    """An ONNX graph in an onnxruntime session, called like the PyTorch model it was exported from:
    `model(input_ids=..., attention_mask=...)` (tensors or arrays) returns an output with
    `.last_hidden_state` or `.logits` as a torch tensor. `config` is the PyTorch model's config."""

    def __init__(self, path: str | os.PathLike, config, output: str, device: str = "cpu", threads: int | None = None):
        ort = require("onnxruntime")
        options = ort.SessionOptions()
        # onnxruntime's threads spin after every run by default, taking the cores from whatever
        # runs next (PyTorch, the tokenizer, another process on a shared machine).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.intra_op_num_threads = threads or torch.get_num_threads()
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.config = config
        self.output = output
        self.path = Path(path)

    def __call__(self, input_ids, attention_mask):
        from transformers.modeling_outputs import BaseModelOutput, SequenceClassifierOutput

        feed = {"input_ids": _int64(input_ids), "attention_mask": _int64(attention_mask)}
        (value,) = self.session.run([self.output], feed)
        tensor = torch.from_numpy(value)
        if self.output == "logits":
            return SequenceClassifierOutput(logits=tensor)
        return BaseModelOutput(last_hidden_state=tensor)


def _int64(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.ascontiguousarray(value, dtype=np.int64)


def load_onnx(directory: str | os.PathLike, device: str = "cpu") -> tuple[OnnxModel, object, dict]:
    """(OnnxModel, tokenizer, metadata) of a directory written by `save_onnx`."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    directory = Path(directory)
    if not is_onnx_dir(directory):
        raise HeadpruneError(f"{directory}: not an ONNX directory (no {ONNX_META_FILE})")
    meta = json.loads((directory / ONNX_META_FILE).read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise HeadpruneError(f"{directory / ONNX_META_FILE}: unknown format {meta.get('format')!r} (expected {FORMAT})")
    config = CONFIG_MAPPING[meta["model_type"]].from_dict(meta["config"])
    model = OnnxModel(directory / ONNX_FILE, config, meta["output"], device=device)
    return model, load_saved_tokenizer(directory), meta
