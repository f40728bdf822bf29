"""Hugging Face transformers, for real: a tiny randomly initialised BERT (built from a config, nothing
downloaded, HF_HUB_OFFLINE=1) trains with `Trainer` on CPU with `LosswatchCallback` against a real
`losswatch serve`; the server must hold every logged step exactly as the Trainer's own
`state.log_history` has it, every evaluation, and the training arguments and model config as the
run's config. A NaN loss with stop_on=("non_finite",) must stop training through
`control.should_training_stop`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tests.conftest import need_module

transformers = need_module("transformers")
need_module("accelerate")
import torch  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments  # noqa: E402

from losswatch.integrations.huggingface import LosswatchCallback  # noqa: E402
from tests.integrations.conftest import read_run, read_series  # noqa: E402


def _dataset(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 30, (n, 8), generator=g)
    labels = (ids[:, 0] > 15).long()
    return [{"input_ids": ids[i], "attention_mask": torch.ones(8, dtype=torch.long), "labels": labels[i]}
            for i in range(n)]


def _model() -> Any:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=2)
    return BertForSequenceClassification(config)


def _args(tmp_path: Path, **kw: Any) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, per_device_eval_batch_size=8,
        num_train_epochs=kw.pop("num_train_epochs", 2), learning_rate=1e-3, logging_steps=1,
        eval_strategy=kw.pop("eval_strategy", "epoch"), save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
        seed=0, run_name="tiny-bert", **kw,
    )  # fmt: skip


class PoisonedTrainer(Trainer):
    """NaN loss from the `nan_from`-th step on; the step after it first waits for the server's answer."""

    nan_from = 3
    callback: LosswatchCallback

    def compute_loss(self, model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        loss = super().compute_loss(model, inputs, *args, **kwargs)
        if self.state.global_step >= self.nan_from:
            if self.state.global_step > self.nan_from:
                self.callback.run.flush(timeout=10)  # the NaN of the previous step: its alert comes back
            loss = loss * float("nan")
        return loss


def test_every_step_and_evaluation_reach_the_server_as_the_trainer_logged_them(server: Any, tmp_path: Path) -> None:
    callback = LosswatchCallback(project="hf", url=server.url, flush_interval=0.2)
    trainer = Trainer(model=_model(), args=_args(tmp_path), train_dataset=_dataset(24, 0),
                      eval_dataset=_dataset(8, 1), callbacks=[callback])
    trainer.train()

    run = read_run(server.url, callback.run.id)
    assert run["project"] == "hf" and run["name"] == "tiny-bert" and run["status"] == "finished"
    assert run["config"]["learning_rate"] == 1e-3 and run["config"]["logging_steps"] == 1
    assert run["config"]["model_config"]["hidden_size"] == 16

    history = trainer.state.log_history
    steps = [h for h in history if "loss" in h]
    assert [h["step"] for h in steps] == list(range(1, 13))  # 24 examples / 4 x 2 epochs: every step
    for key, kind in (("loss", "loss"), ("grad_norm", "grad_norm"), ("learning_rate", "lr"), ("epoch", "other")):
        assert read_series(server.url, run["id"], key) == {h["step"]: h[key] for h in steps if key in h}, key
        assert run["summary"][key]["kind"] == kind
    evals = [h for h in history if "eval_loss" in h]
    assert [h["step"] for h in evals] == [6, 12]
    assert run["summary"]["eval_loss"]["kind"] == "loss"  # an evaluation loss is a loss (wire.guess_kind)
    for key in ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second"):  # bookkeeping, not a
        assert run["summary"][key]["kind"] == "other", key  # metric the evaluation rules would judge
    for key in ("eval_loss", "eval_runtime"):
        assert read_series(server.url, run["id"], key) == {h["step"]: h[key] for h in evals}, key
    summary = next(h for h in history if "train_runtime" in h)
    assert read_series(server.url, run["id"], "train_loss") == {12: summary["train_loss"]}


def test_a_non_finite_loss_alert_stops_training(server: Any, tmp_path: Path) -> None:
    callback = LosswatchCallback(project="hf", url=server.url, stop_on=("non_finite",), flush_interval=0.2)
    trainer = PoisonedTrainer(model=_model(), args=_args(tmp_path, num_train_epochs=20, eval_strategy="no",
                                                                   logging_nan_inf_filter=False),
                              train_dataset=_dataset(24, 0), callbacks=[callback])
    trainer.callback = callback
    trainer.train()

    # steps 1..3 finite; step 4 NaN; during step 5 the alert comes back; the Trainer stops after it
    assert trainer.state.global_step == 5
    run = read_run(server.url, callback.run.id)
    assert run["status"] == "stopped"
    loss = read_series(server.url, run["id"], "loss")
    assert sorted(loss) == [1, 2, 3, 4, 5]
    assert all(math.isfinite(loss[s]) for s in (1, 2, 3)) and math.isnan(loss[4]) and math.isnan(loss[5])
