"""``wire.guess_kind``: the one function that gives a key its kind (client, integrations, MLflow API,
importers). The table of docs/client.md, row by row."""

from __future__ import annotations

import pytest

from losswatch.client import wire

TABLE = {
    "sys/cpu_percent": "other", "sys/gpu0/mem_allocated_mib": "other",
    "lr": "lr", "lr/pg0": "lr", "lr-Adam": "lr", "learning_rate": "lr", "train/lr": "lr",
    "grad_norm": "grad_norm", "train/grad_norm": "grad_norm", "grad_2.0_norm_total": "grad_norm",
    "loss": "loss", "train/loss": "loss", "train_loss": "loss", "train_loss_epoch": "loss", "train_loss_step": "loss",
    "val_loss": "loss", "eval_loss": "loss", "val/loss": "loss", "test_loss": "loss", "total_loss": "loss",
    "val/box_loss": "loss", "val/dfl_loss": "loss",
    "train/loss/box": "loss_component", "train/box_loss": "loss_component", "loss_cls": "loss_component",
    "train_ce": "loss_component", "train_l2": "loss_component", "val/loss/box": "loss_component", "train/kl": "loss_component",
    "val_acc": "metric", "train_acc": "metric", "accuracy": "metric", "f1": "metric", "val/mAP50-95": "metric",
    "metrics/mAP50-95(B)": "metric", "metrics/precision(B)": "metric", "eval_bleu": "metric", "val/top1": "metric",
    "eval_runtime": "other", "eval_samples_per_second": "other", "epoch": "other", "step": "other", "temperature": "other",
}


@pytest.mark.parametrize(("key", "kind"), sorted(TABLE.items()))
def test_guess_kind(key: str, kind: str) -> None:
    assert wire.guess_kind(key) == kind
    assert kind in wire.SERIES_KINDS


#: keys logged as evaluation results (``run.log_eval``): a metric unless they are a loss or bookkeeping
EVAL_TABLE = {
    "wer": "metric", "val/perplexity": "metric", "eval_custom": "metric", "accuracy": "metric",
    "val_loss": "loss", "eval_loss": "loss", "val/loss/box": "loss_component",
    "eval_runtime": "other", "eval_samples_per_second": "other", "eval_steps_per_second": "other",
    "epoch": "other", "sys/cpu_percent": "other", "lr": "lr",
}


@pytest.mark.parametrize(("key", "kind"), sorted(EVAL_TABLE.items()))
def test_guess_kind_of_an_evaluation(key: str, kind: str) -> None:
    assert wire.guess_kind(key, evaluation=True) == kind
