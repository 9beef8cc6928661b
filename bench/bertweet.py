"""The BERTweet shape for CPU benchmarks, and the heads the dissertation's MOIH1 prunes.

A random-init RoBERTa masked LM of BERTweet's size (vocab 64001, 12 layers x 12 heads, hidden 768,
intermediate 3072, 130 positions, one token type: 134,965,505 parameters, the dissertation's CM):
random weights cost what trained ones do, and nothing is downloaded. Used by bench/inference.py
(inference and adjusting, complete vs 68 heads pruned) and bench/cpu_profile.py (--bertweet-steps)."""

from __future__ import annotations

N_PARAMS = 134_965_505  # the dissertation's Table 14, CM
N_LAYERS = N_HEADS = 12

# The dissertation's order of importance OI (Figure 2, the blue heatmap), OI[layer][head]: the head's
# position in the order, 0 pruned first; MOIH1 prunes the first 68. Transcribed from the
# dissertation's text; its OCR put a stray "3" and "5" into the rows of layers 9 and 10, without
# which the table is a permutation of 0..143 (checked by `oi_heads`).
OI = (
    (0, 105, 2, 79, 70, 27, 11, 3, 1, 72, 19, 13),
    (9, 31, 80, 22, 73, 66, 50, 15, 38, 5, 7, 93),
    (69, 86, 64, 117, 75, 104, 29, 55, 59, 85, 52, 23),
    (81, 46, 74, 34, 71, 100, 56, 88, 97, 62, 37, 77),
    (36, 51, 84, 54, 25, 42, 26, 91, 68, 43, 20, 48),
    (90, 49, 76, 24, 95, 41, 12, 18, 39, 61, 78, 21),
    (8, 110, 14, 28, 16, 63, 103, 47, 89, 33, 109, 118),
    (67, 99, 127, 114, 125, 17, 4, 135, 123, 108, 119, 40),
    (121, 142, 98, 94, 143, 120, 136, 132, 113, 101, 129, 139),
    (141, 138, 137, 128, 122, 131, 58, 30, 133, 112, 134, 115),
    (44, 107, 130, 126, 83, 96, 124, 116, 140, 92, 102, 111),
    (106, 6, 65, 10, 57, 32, 45, 87, 82, 35, 60, 53),
)
MOIH1_PRUNED = 68


def oi_heads(k: int = MOIH1_PRUNED) -> list[tuple[int, int]]:
    """The first `k` heads of OI as (layer, head), in OI's order: for k = 68, MOIH1's pruned heads
    (per layer 8, 9, 6, 5, 9, 8, 7, 4, 0, 2, 1, 9: no layer loses every head)."""
    ranked = sorted((rank, layer, head) for layer, row in enumerate(OI) for head, rank in enumerate(row))
    assert [rank for rank, _, _ in ranked] == list(range(N_LAYERS * N_HEADS)), "OI is not a permutation"
    return [(layer, head) for _, layer, head in ranked[:k]]


def bertweet_shape(seed: int = 0):
    """A random-init RobertaForMaskedLM of BERTweet's shape (checked: `N_PARAMS` parameters)."""
    import torch
    from transformers import RobertaConfig, RobertaForMaskedLM

    from headprune.models import count_parameters

    torch.manual_seed(seed)
    config = RobertaConfig(vocab_size=64001, hidden_size=768, num_hidden_layers=N_LAYERS,
                           num_attention_heads=N_HEADS, intermediate_size=3072, max_position_embeddings=130,
                           type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    model = RobertaForMaskedLM(config).eval()
    n_params = count_parameters(model)
    assert n_params == N_PARAMS, f"the BERTweet shape has {n_params:,} parameters, not {N_PARAMS:,}"
    return model


def adjusting_step_seconds(models: dict, tokenizer, ids: list[list[int]], rounds: int, batch_size: int = 16,
                           precision: str = "fp32") -> dict[str, list[float]]:
    """Seconds of one adjusting step (`scoring.adjust`: masked-LM loss, backward, AdamW) of each of
    `models` on a batch of `batch_size` rows of `ids`, measured side by side on the current thread
    count: one untimed warm-up step each, then `rounds` rounds in which each model in turn takes one
    step on the next batch (the models are trained, so pass copies)."""
    import torch

    from headprune.scoring import adjust
    from headprune.settings import ScoreSettings

    settings = ScoreSettings(epochs=1, batch_size=batch_size)
    cpu = torch.device("cpu")

    def step(model, index: int) -> float:
        rows = [ids[(index * batch_size + i) % len(ids)] for i in range(batch_size)]
        return adjust(model, tokenizer, rows, settings, index + 1, cpu, precision)

    for model in models.values():
        step(model, 0)
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for index in range(1, rounds + 1):
        for name, model in models.items():
            seconds[name].append(round(step(model, index), 3))
    return seconds
