"""The batched evaluation engine: PRUN_ADJ_EVAL for many models at once (fast on a GPU).

`scoring.score_seed` is the reference: one model, batch 16, one seed at a time. Here the seeds of one
pruned set (and, through `StackedMLM`, any models of the same shape) are trained *together*: their
parameters are stacked into (N, ...) tensors and every linear layer becomes one batched matmul, so
the GPU sees N x 16 rows per step while each model still computes exactly what the reference does:

- each model gets its own seed's split (`data.split_halves`), its own batch order
  (`torch.Generator().manual_seed(seed)` + `randperm` per epoch), its own masking
  (`DataCollatorForLanguageModeling(tokenizer, mlm_probability, seed=seed)`, called in the same
  order), batches of `settings.batch_size` rows, the same MLM loss (logits at masked positions only,
  mean over that model's masked tokens), its own linear learning-rate schedule and its own AdamW
  (betas 0.9/0.999, eps, no weight decay; Adam is elementwise, so one update over stacked tensors
  with per-model step counts and learning rates is N independent AdamWs);
- a batch with no masked token advances that model's schedule but not its optimizer (as the
  reference); a model whose data ran out (fewer steps) is frozen: its parameters and Adam state
  are left bit-for-bit unchanged;
- the *flat layout*: in training and in feature extraction, each model's real tokens (its batch's
  rows one after the other) lie on one axis, padded only to the longest model of the tick, so the
  linear layers (nearly all the work) skip the row padding (on tweets 50-65% of a padded batch);
  attention gathers the tokens into rows of a common width (masked, so the outputs at real tokens
  are the same) and back. Missing rows are dummy rows that carry no loss. Position ids are computed
  per row as the model family does (BERT: column; RoBERTa: from the non-pad ids, after masking).

What differs from the reference, on purpose:

- **dropout streams.** Every model draws its dropout masks from the one global RNG, seeded from the
  group's seeds (`group_seed`): the masks are independent between models (per-model randomness, as
  `vmap(..., randomness="different")` would give) and deterministic for the same group, but they are
  not the reference loop's masks, and a seed's score depends (statistically only) on which seeds
  shared its group. With dropout disabled the trained weights equal the reference's up to floating
  point rounding (tests/test_engine.py); with dropout, parity is statistical (bench/engine.py runs a
  paired t-test over seeds). The groups themselves are reproducible: they are planned over the
  whole request, stored tasks included, with a pack size from the device's total memory
  (`plan_units`, `auto_pack_size`), so a run stopped and resumed, in slices or after a crash,
  trains the groups an uninterrupted run would and gets its scores. How streams are drawn
  (`DROPOUT_STREAMS`), the pack size and the precision are in every batched score's store key
  (`batched_store_entries`): scores drawn otherwise are never found for one another.
- **precision.** On CUDA the forward/backward runs under bf16 autocast with fp32 master weights,
  fp32 Adam state and an fp32 loss; features are computed in fp32. On CPU everything is fp32.
- **the SVM** gets precomputed RBF Gram matrices (float64, on the device) -
  `scoring.svm_f1`, the one SVM stage of both (the reference computes it on the CPU).
- **timing.** The adjusting stage of a group is timed once; every seed of the group reports that
  shared wall time as its `adjust_seconds`.

Supported families: the rows of `families.FAMILIES` marked `batched_engine` (bert, roberta,
xlm-roberta, camembert; `SUPPORTED_FAMILIES`) with absolute position embeddings; `supports(model)`
says whether a model can run here, `BatchedExecutor` falls back to the reference for the others.

Modules: `options` (EngineOptions, supports), `stack` (StackedMLM), `optim` (StackedAdamW),
`batches` (each model's batches, worker processes, the flat layout), `stages` (adjusting, features,
SVM; a group of seeds, a pack), `packing` (what trains together), `executor` (BatchedExecutor),
`selfcheck` (the check `run.engine = "auto"` runs on CUDA before trusting the engine)."""

from .executor import BatchedExecutor
from .options import DROPOUT_STREAMS, SUPPORTED_FAMILIES, EngineOptions, batched_store_entries, supports
from .packing import auto_pack_size, plan_units
from .selfcheck import self_check
from .stack import StackedMLM
from .stages import adjust_stacked

# What the rest of headprune needs (the executors, the dry run's estimate); the parts live in their modules.
__all__ = [
    "DROPOUT_STREAMS", "SUPPORTED_FAMILIES", "BatchedExecutor", "EngineOptions", "StackedMLM", "adjust_stacked",
    "auto_pack_size", "batched_store_entries", "plan_units", "self_check", "supports",
]
