"""Load pruned-model directories the way a transformers user does, in a process of its own.

    python _hf_load.py plain|headprune RESULT DIR...

`plain`: headprune cannot be imported here (as where it is not installed), so every load passes
`trust_remote_code=True`; `headprune`: `import headprune` first and never pass it. For each DIR:
AutoConfig, AutoModel (hidden states and pooler on a padded batch), AutoModelForMaskedLM,
AutoModelForSequenceClassification with two labels (the keys each load reports, one Trainer step
when accelerate is installed), pipeline("text-classification") on two tweets, and AutoModel's
save_pretrained -> from_pretrained round trip. Everything measured goes to RESULT (torch.save)."""

from __future__ import annotations

import sys

MODE, RESULT, DIRS = sys.argv[1], sys.argv[2], sys.argv[3:]
if MODE == "plain":
    sys.modules["headprune"] = None  # `import headprune` raises ImportError, as without the package
else:
    import headprune  # noqa: F401 - registers the Auto classes

import importlib.util
import tempfile

import torch

torch.set_num_threads(1)

from transformers import (  # noqa: E402
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    pipeline,
)

TWEETS = ["someuser big fan of natalie portman since closer, loved her in that movie", "i hate mondays someurl"]
remote = {"trust_remote_code": True} if MODE == "plain" else {}


def count(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def trainer_step(model, tokenizer, out_dir: str) -> dict:
    """One Trainer step on two labelled tweets: the loss and whether any weight moved."""
    from transformers import Trainer, TrainingArguments

    encoded = tokenizer(TWEETS, padding=True)
    rows = [{"input_ids": encoded["input_ids"][i], "attention_mask": encoded["attention_mask"][i], "labels": i}
            for i in range(len(TWEETS))]
    before = [p.detach().clone() for p in model.parameters()]
    args = TrainingArguments(output_dir=out_dir, max_steps=1, per_device_train_batch_size=2, learning_rate=1e-2,
                             report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no")
    result = Trainer(model=model, args=args, train_dataset=rows).train()
    moved = any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    return {"loss": float(result.training_loss), "moved": moved}


try:
    import headprune  # noqa: F401, F811
    results: dict = {"headprune_importable": True}
except ImportError:
    results = {"headprune_importable": False}
for directory in DIRS:
    tokenizer = AutoTokenizer.from_pretrained(directory)
    batch = tokenizer(TWEETS, padding=True, return_tensors="pt")
    entry: dict = {"config": type(AutoConfig.from_pretrained(directory, **remote)).__name__}
    encoder, info = AutoModel.from_pretrained(directory, output_loading_info=True, **remote)
    with torch.no_grad():
        output = encoder(**batch)
    entry.update(
        encoder=type(encoder).__name__,
        hidden=output.last_hidden_state,
        pooler={k: v.clone() for k, v in encoder.pooler.state_dict().items()} if encoder.pooler is not None else None,
        encoder_keys={"missing": info["missing_keys"], "unexpected": info["unexpected_keys"]},
        n_params=count(encoder),
    )
    mlm, info = AutoModelForMaskedLM.from_pretrained(directory, output_loading_info=True, **remote)
    entry["mlm_keys"] = {"missing": info["missing_keys"], "unexpected": info["unexpected_keys"]}
    classifier, info = AutoModelForSequenceClassification.from_pretrained(
        directory, num_labels=2, output_loading_info=True, **remote
    )
    entry["classifier_keys"] = {"missing": info["missing_keys"], "unexpected": info["unexpected_keys"]}
    with tempfile.TemporaryDirectory() as tmp:
        if importlib.util.find_spec("accelerate") is not None:
            entry["trainer"] = trainer_step(classifier, tokenizer, tmp)
        labelled = pipeline("text-classification", model=directory, **remote)(TWEETS)
        entry["pipeline"] = [row["label"] for row in labelled]
        encoder.save_pretrained(tmp)
        again = AutoModel.from_pretrained(tmp, **remote)
        with torch.no_grad():
            entry["round_trip_hidden"] = again(**batch).last_hidden_state
        entry["round_trip_params"] = count(again)
    results[directory] = entry
torch.save(results, RESULT)
