"""Hugging Face ``transformers.Trainer``: a ``TrainerCallback``.

::

    from transformers import Trainer, TrainingArguments
    from losswatch.integrations.huggingface import LosswatchCallback

    args = TrainingArguments("out", logging_steps=1, eval_strategy="epoch", report_to="none")
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                      callbacks=[LosswatchCallback(project="bert", stop_on=("non_finite", "divergence"))])
    trainer.train()

What is logged, at step ``state.global_step`` (optimizer steps), with the keys exactly as the Trainer
writes them:

- every ``Trainer.log`` call (``on_log``): ``loss``, ``grad_norm``, ``learning_rate``, ``epoch`` and
  the end-of-training summary (``train_loss``, ``train_runtime``, ...). The Trainer logs every
  ``logging_steps`` steps (default 500) the mean loss of the steps since its last log: set
  ``logging_steps=1`` to get every step's loss. (Reading the loss to log it is the Trainer's own
  ``.item()``; losswatch adds no device sync.)
- every evaluation (``on_evaluate``): ``eval_loss``, ``eval_<metric>``... as evaluation metrics.
- the run's config: the ``TrainingArguments`` and, under ``model_config``, the model's config.

Stop on alert: when an alert whose rule is in ``stop_on`` fires, ``control.should_training_stop``
is set at the next step end and the Trainer stops cleanly (the run ends as ``stopped``).
In a multi-process job, rank zero's decision is shared with every rank every ``stop_check_every``
steps (one small all-reduce).

The callback starts its run at ``on_train_begin`` on the main process only (unless ``run=`` is
given) and finishes it at ``on_train_end``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from transformers import TrainerCallback

from losswatch.client.run import Run
from losswatch.integrations._common import is_number, plain_config, start_run

__all__ = ["LosswatchCallback"]

log = logging.getLogger("losswatch")

_EVAL_PREFIXES = ("eval_", "test_")


class LosswatchCallback(TrainerCallback):
    """Args: ``project``, ``name`` (default: ``args.run_name``), ``config`` (merged over the
    training arguments), ``tags``, ``run`` (an existing :class:`~losswatch.Run`, neither started nor
    finished here), ``stop_on``, and any other argument of :func:`losswatch.init`."""

    def __init__(
        self,
        project: str | None = None,
        name: str | None = None,
        *,
        config: Mapping[str, Any] | None = None,
        run: Run | None = None,
        stop_check_every: int = 20,
        **init_kwargs: Any,
    ) -> None:
        self.project = project
        self.name = name
        self.config = dict(config or {})
        self.run = run
        self._own_run = run is None
        self._init_kwargs = init_kwargs
        self.stop_check_every = max(1, stop_check_every)
        self._stopped = False
        self._finished = False

    # ---- lifecycle ------------------------------------------------------------------------------

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or (self.run is not None and not self._own_run):
            return
        if self.run is not None and not self._finished:
            return  # a second train() call on the same callback: keep logging into the same run
        config = plain_config(args)
        model_config = getattr(model, "config", None)
        if model_config is not None:
            config["model_config"] = plain_config(model_config)
        config.update(plain_config(self.config))
        if getattr(args, "logging_steps", 1) not in (1, 1.0):
            log.warning(
                "losswatch: the Trainer logs every %s steps; set TrainingArguments(logging_steps=1) "
                "to send every step's loss", args.logging_steps,
            )
        name = self.name or getattr(args, "run_name", None)
        self.run = start_run(None, config=config, project=self.project, name=name, **self._init_kwargs)
        self._finished = False
        self._stopped = False

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.run is None or not state.is_world_process_zero:
            return
        if not self._own_run:
            self.run.flush()
            return
        if not self._finished:
            self._finished = True
            self.run.finish("stopped" if self._stopped else "finished")

    # ---- values ---------------------------------------------------------------------------------

    def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None,
               **kwargs: Any) -> None:
        run = self._active(state)
        if run is None or not logs:
            return
        # evaluation results come through on_evaluate too; they are logged there, as eval metrics
        values = {k: v for k, v in logs.items() if is_number(v) and not k.startswith(_EVAL_PREFIXES)}
        if values:
            run.log(values, step=state.global_step)

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Mapping[str, Any] | None = None,
                    **kwargs: Any) -> None:
        run = self._active(state)
        if run is None or not metrics:
            return
        values = {k: v for k, v in metrics.items() if is_number(v)}
        if values:
            run.log_eval(values, step=state.global_step)

    # ---- stop on alert --------------------------------------------------------------------------

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        wants = self.run is not None and state.is_world_process_zero and self.run.should_stop
        if getattr(args, "world_size", 1) > 1:
            if state.global_step % self.stop_check_every:
                return
            wants = _any_rank(wants, args.device)
        if wants and not self._stopped:
            self._stopped = True
            control.should_training_stop = True
            alerts = self.run.alerts if self.run is not None else []
            reason = ", ".join(f"{a.get('rule')} on {a.get('series')}" for a in alerts) or "an alert on rank zero"
            log.warning("losswatch: stopping training after step %d: %s", state.global_step, reason)

    def _active(self, state: Any) -> Run | None:
        if self.run is None or self._finished or not state.is_world_process_zero:
            return None
        return self.run


def _any_rank(flag: bool, device: Any) -> bool:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
