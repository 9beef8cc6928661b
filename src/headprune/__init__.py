"""headprune: find which attention heads of a pretrained encoder can be pruned before finetuning.

The public API is what this module exports (`__all__`, listed in tests/test_public_api.py), as
scikit-learn's packages re-export from their implementation modules: a user's script imports only
`headprune`. The modules behind it are the implementation and may change. In the method's order:

- data and models: `load_dataset`, `load_model` (encoder + tokenizer), `load_base` (a masked-LM base
  model for the method, its MLM head warmed up where fresh);
- Step 1, importance: `importance_order` (the gradient criterion, OI) and the criteria objects behind
  the configuration's order names (`criterion_for`), each producing an `Order`;
- Step 2, scoring and searching: a `Scorer` over a `ResultStore`; `h1_search`, `h2_search`,
  `h3_search` return typed results (`H1Result`, `GreedyResult`); `rank_models` (RANKING_MODELS);
- the whole method: `run(config, run_dir)` (a `Config`, or its TOML file, which `load_config`
  reads and checks) writes a run directory whose `summary.json` is a `Summary` (`load_summary`);
  `verify_run` recomputes it from the store; `write_report` renders it;
- the pruned model: `prune_heads`, `pruned_heads`, `HeadSet` (a set of heads, and its head
  specification '0:1,2;3:*'), `save_pruned`, `load_pruned`."""

# Defined before the imports below: `pipeline` reads it while this module is still loading.
__version__ = "0.1.0"

# ----------------------------------------------------------------------------- public API
from .base import BaseModel, load_base
from .checkpoint import load_pruned, register_auto_classes, save_pruned
from .config import Config, load_config
from .data import Dataset, load_dataset
from .errors import HeadpruneError
from .heads import HeadSet
from .importance import (
    Criterion,
    GradientImportance,
    MagnitudeImportance,
    Order,
    RandomImportance,
    criterion_for,
    importance_order,
    random_order,
)
from .models import load_model
from .pipeline import run
from .report import write_report
from .scorer import Scorer
from .search import h1_search, h2_search, h3_search, rank_models
from .store import ResultStore
from .summary import GreedyResult, H1Result, Summary, load_summary
from .surgery import prune_heads, pruned_heads
from .verify import verify_run

# transformers' Auto classes load pruned-model directories with headprune's classes (no trust_remote_code).
register_auto_classes()

__all__ = [
    "BaseModel",
    "Config",
    "Criterion",
    "Dataset",
    "GradientImportance",
    "GreedyResult",
    "H1Result",
    "HeadSet",
    "HeadpruneError",
    "MagnitudeImportance",
    "Order",
    "RandomImportance",
    "ResultStore",
    "Scorer",
    "Summary",
    "__version__",
    "criterion_for",
    "h1_search",
    "h2_search",
    "h3_search",
    "importance_order",
    "load_base",
    "load_config",
    "load_dataset",
    "load_model",
    "load_pruned",
    "load_summary",
    "prune_heads",
    "pruned_heads",
    "random_order",
    "rank_models",
    "run",
    "save_pruned",
    "verify_run",
    "write_report",
]
