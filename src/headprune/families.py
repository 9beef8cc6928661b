"""Where each model family keeps its parts: data, not code (the TextPruner idea).

Loading (`models`), surgery (`surgery`) and the batched engine (`engine.stack`) read one `Family`
row per `config.model_type` instead of branching on family names; adding a family is adding a row.
Paths are dotted attribute paths, resolved with `module_at`."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .errors import HeadpruneError


@dataclass(frozen=True)
class Family:
    """Where one model family keeps its modules, and how it numbers positions.

    Paths under "encoder layer" are relative to one layer of `layers`; "base model" paths to
    `model.base_model`; "masked-LM model" paths to the masked-LM model itself."""

    # base model
    layers: str  # the ModuleList of encoder layers
    word_embeddings: str
    position_embeddings: str
    token_type_embeddings: str
    embedding_norm: str  # LayerNorm after the summed embeddings
    # encoder layer (post-LN: attention -> add & norm -> feed-forward -> add & norm)
    attention: str  # the self-attention module (holds the head counts)
    query: str
    key: str
    value: str
    output: str  # the attention output projection (its input is the concatenated heads)
    attention_norm: str  # LayerNorm after the attention block
    intermediate: str  # feed-forward up projection
    ffn_output: str  # feed-forward down projection
    output_norm: str  # LayerNorm after the feed-forward block
    # masked-LM model
    mlm_head_prefixes: tuple[str, ...]  # state-dict prefixes of the masked-LM head
    mlm_head: tuple[str, ...]  # modules that map hidden states to vocabulary logits, applied in order
    mlm_dense: str  # inside the head: dense -> activation -> norm -> decoder
    mlm_norm: str
    mlm_decoder: str
    mlm_activation: str | None  # the head's activation; None: `config.hidden_act` (BERT's transform)
    # positions
    # Positions reserved before the first token: a RoBERTa-style model numbers real tokens from
    # padding_idx + 1 (= 2), so 2 of its `max_position_embeddings` never hold a token.
    position_offset: int
    # Position ids computed from the padding index (RoBERTa's create_position_ids_from_input_ids:
    # cumulative count of non-pad tokens + padding_idx, pads at padding_idx) instead of the column.
    padded_positions: bool
    # Sequence classification: the pooler a `AutoModelForSequenceClassification` keeps, relative to its
    # base model (BERT: "pooler"); None where the family's classifier has none (RoBERTa's pools in its
    # classification head, so a checkpoint's pooler is not used there).
    pooler: str | None
    # Whether the batched engine (`headprune.engine`) implements this family's forward pass.
    batched_engine: bool


_BERT_LIKE = dict(
    layers="encoder.layer",
    word_embeddings="embeddings.word_embeddings",
    position_embeddings="embeddings.position_embeddings",
    token_type_embeddings="embeddings.token_type_embeddings",
    embedding_norm="embeddings.LayerNorm",
    attention="attention.self",
    query="attention.self.query",
    key="attention.self.key",
    value="attention.self.value",
    output="attention.output.dense",
    attention_norm="attention.output.LayerNorm",
    intermediate="intermediate.dense",
    ffn_output="output.dense",
    output_norm="output.LayerNorm",
)
_ROBERTA_LIKE = dict(
    _BERT_LIKE,
    mlm_head_prefixes=("lm_head.",),
    mlm_head=("lm_head",),
    mlm_dense="lm_head.dense",
    mlm_norm="lm_head.layer_norm",
    mlm_decoder="lm_head.decoder",
    mlm_activation="gelu",  # RobertaLMHead applies gelu whatever hidden_act says
    position_offset=2,
    padded_positions=True,
    pooler=None,
    batched_engine=True,
)
FAMILIES: dict[str, Family] = {
    "bert": Family(
        **_BERT_LIKE,
        mlm_head_prefixes=("cls.predictions.",),
        mlm_head=("cls",),
        mlm_dense="cls.predictions.transform.dense",
        mlm_norm="cls.predictions.transform.LayerNorm",
        mlm_decoder="cls.predictions.decoder",
        mlm_activation=None,
        position_offset=0,
        padded_positions=False,
        pooler="pooler",
        batched_engine=True,
    ),
    "roberta": Family(**_ROBERTA_LIKE),
    "xlm-roberta": Family(**_ROBERTA_LIKE),
    "camembert": Family(**_ROBERTA_LIKE),
    "electra": Family(
        **_BERT_LIKE,
        mlm_head_prefixes=("generator_predictions.", "generator_lm_head."),
        mlm_head=("generator_predictions", "generator_lm_head"),
        mlm_dense="generator_predictions.dense",
        mlm_norm="generator_predictions.LayerNorm",
        mlm_decoder="generator_lm_head",
        mlm_activation="gelu",
        position_offset=0,
        padded_positions=False,
        pooler=None,
        batched_engine=False,  # not implemented in the engine (nor tested there)
    ),
}


def family_of(config) -> Family:
    """The row of `config.model_type`; an unsupported family is a user error naming the supported ones."""
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise HeadpruneError(
            f"unsupported model family '{model_type}': headprune supports {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[model_type]


def module_at(root: nn.Module, path: str) -> nn.Module:
    """The module at a dotted path of a family row (e.g. `"attention.self.query"`) below `root`."""
    module = root
    for part in path.split("."):
        module = getattr(module, part)
    return module
