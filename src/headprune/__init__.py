"""headprune: find which attention heads of a pretrained encoder can be pruned before finetuning."""

from .checkpoint import load_pruned, register_auto_classes, save_pruned
from .data import GROUPS, Dataset, expand_datasets, load_dataset, preprocess, split_halves
from .errors import HeadpruneError
from .models import count_parameters, fingerprint, load_model
from .surgery import HeadGates, kept_heads, prune_heads, pruned_heads

__version__ = "0.1.0"

# transformers' Auto classes load pruned-model directories with headprune's classes (no trust_remote_code).
register_auto_classes()

__all__ = [
    "GROUPS",
    "Dataset",
    "HeadGates",
    "HeadpruneError",
    "count_parameters",
    "expand_datasets",
    "fingerprint",
    "kept_heads",
    "load_dataset",
    "load_model",
    "load_pruned",
    "preprocess",
    "prune_heads",
    "pruned_heads",
    "save_pruned",
    "split_halves",
]
