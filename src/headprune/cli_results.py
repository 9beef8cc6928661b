"""Commands that turn a run into something people use: report, export, finetune, predict."""

from __future__ import annotations
