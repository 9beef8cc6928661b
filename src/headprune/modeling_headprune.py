"""Pruned BERT and RoBERTa encoders for transformers: every layer keeps its own number of attention heads.

headprune writes this file, unchanged, into each pruned-model directory whose layers keep different
numbers of heads (as `modeling_headprune.py`, named by `auto_map` in its config.json), and
`import headprune` registers these same classes with transformers' Auto classes. It imports only
torch and transformers, so `AutoModel.from_pretrained(DIR, trust_remote_code=True)` works where
headprune is not installed; `trust_remote_code=True` lets transformers import this file and nothing else.

config.json records what is left of the original model: `headprune_kept` ({original layer: [original
heads kept]} for the layers that remain), `headprune_original_layers`, `num_hidden_layers` (the layers
that remain) and `headprune_pooler` (whether the weights hold the checkpoint's pooler). Each class is
the family's own transformers class which, once its modules exist, shrinks every attention layer to
its kept heads (query/key/value rows, output-projection columns): the shapes of the saved weights,
which `from_pretrained` then loads strictly. Everything else (forward, `save_pretrained`, `Trainer`,
`pipeline`) is transformers' own."""

from torch import nn
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaForSequenceClassification,
    RobertaModel,
)

# Where BERT and RoBERTa keep their encoder layers and attention projections (the same places as
# headprune's families table, which its tests check).
LAYERS = "encoder.layer"
ATTENTION = "attention.self"
PROJECTIONS = ("attention.self.query", "attention.self.key", "attention.self.value")
OUTPUT = "attention.output.dense"


def heads_per_layer(config) -> list[int]:
    """How many heads each remaining layer keeps, in layer order (empty: nothing was pruned)."""
    kept = getattr(config, "headprune_kept", None) or {}
    return [len(heads) for _, heads in sorted((int(layer), heads) for layer, heads in kept.items())]


def _module(root: nn.Module, path: str) -> nn.Module:
    for name in path.split("."):
        root = getattr(root, name)
    return root


def _replace(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(_module(root, parent), name, module)


def _linear(like: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    return nn.Linear(in_features, out_features, bias=like.bias is not None, device=like.weight.device,
                     dtype=like.weight.dtype)


def prune_to_config(model) -> None:
    """Shrink each encoder layer's attention of `model` to the number of heads its config records."""
    config = model.config
    counts = heads_per_layer(config)
    if not counts:
        return
    layers = _module(model.base_model, LAYERS)
    if len(counts) != len(layers):
        raise ValueError(
            f"config: headprune_kept lists {len(counts)} layers but the model has {len(layers)} (num_hidden_layers)"
        )
    size = config.hidden_size // config.num_attention_heads
    for layer, n in zip(layers, counts):
        if n == config.num_attention_heads:
            continue
        for path in PROJECTIONS:
            old = _module(layer, path)
            _replace(layer, path, _linear(old, old.in_features, n * size))
        old = _module(layer, OUTPUT)
        _replace(layer, OUTPUT, _linear(old, n * size, old.out_features))
        attention = _module(layer, ATTENTION)
        attention.num_attention_heads = n
        attention.all_head_size = n * size


class PrunedHeads:
    """Mixed into a transformers model class: its attention layers take the recorded shapes before
    transformers initialises or loads the weights (`post_init` ends every model's construction)."""

    def post_init(self):
        prune_to_config(self)
        super().post_init()


def _pooling(config, add_pooling_layer: bool) -> bool:
    # A pooler only where the weights hold the checkpoint's: never a randomly initialised one.
    return add_pooling_layer and bool(getattr(config, "headprune_pooler", False))


class HeadprunedBertConfig(BertConfig):
    model_type = "headprune-pruned-bert"


class HeadprunedBertModel(PrunedHeads, BertModel):
    config_class = HeadprunedBertConfig
    _keys_to_ignore_on_load_unexpected = [r"^cls\."]  # the masked-LM head the encoder leaves out

    def __init__(self, config, add_pooling_layer=True):
        super().__init__(config, add_pooling_layer=_pooling(config, add_pooling_layer))


class HeadprunedBertForMaskedLM(PrunedHeads, BertForMaskedLM):
    config_class = HeadprunedBertConfig
    _keys_to_ignore_on_load_unexpected = [r"pooler"]  # the pooler the masked-LM model carries beside it


class HeadprunedBertForSequenceClassification(PrunedHeads, BertForSequenceClassification):
    config_class = HeadprunedBertConfig
    _keys_to_ignore_on_load_unexpected = [r"^cls\."]


class HeadprunedRobertaConfig(RobertaConfig):
    model_type = "headprune-pruned-roberta"


class HeadprunedRobertaModel(PrunedHeads, RobertaModel):
    config_class = HeadprunedRobertaConfig
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\."]

    def __init__(self, config, add_pooling_layer=True):
        super().__init__(config, add_pooling_layer=_pooling(config, add_pooling_layer))


class HeadprunedRobertaForMaskedLM(PrunedHeads, RobertaForMaskedLM):
    config_class = HeadprunedRobertaConfig
    _keys_to_ignore_on_load_unexpected = [r"pooler"]


class HeadprunedRobertaForSequenceClassification(PrunedHeads, RobertaForSequenceClassification):
    config_class = HeadprunedRobertaConfig
    # RoBERTa's classification head pools on its own, and has no masked-LM head.
    _keys_to_ignore_on_load_unexpected = [r"pooler", r"^lm_head\."]


# {family's model type: {Auto class name: class}}: what `auto_map` names and `import headprune` registers.
AUTO_CLASSES = {
    "bert": {
        "AutoConfig": HeadprunedBertConfig,
        "AutoModel": HeadprunedBertModel,
        "AutoModelForMaskedLM": HeadprunedBertForMaskedLM,
        "AutoModelForSequenceClassification": HeadprunedBertForSequenceClassification,
    },
    "roberta": {
        "AutoConfig": HeadprunedRobertaConfig,
        "AutoModel": HeadprunedRobertaModel,
        "AutoModelForMaskedLM": HeadprunedRobertaForMaskedLM,
        "AutoModelForSequenceClassification": HeadprunedRobertaForSequenceClassification,
    },
}
# `save_pretrained` of a model built from these classes writes this file and `auto_map` beside it again.
for _classes in AUTO_CLASSES.values():
    for _auto, _class in _classes.items():
        _class._auto_class = _auto
