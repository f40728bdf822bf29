"""Ultralytics YOLO: one call attaches losswatch to a model through its callbacks.

::

    from ultralytics import YOLO
    import losswatch.integrations.ultralytics as lw

    model = YOLO("yolo11n.pt")
    lw.attach(model, project="yolo", stop_on=("divergence", "non_finite"))
    results = model.train(data="coco8.yaml", epochs=3, imgsz=640)

What is sent (keys exactly as the trainer names them):

- every batch, at step ``epoch * batches_per_epoch + batch_index`` (Ultralytics' own ``ni``):
  each loss component of ``trainer.loss_items`` (``train/box_loss``, ``train/cls_loss``,
  ``train/dfl_loss``; kind ``loss_component``), their sum ``train/loss`` (kind ``loss``: the
  detectors' divergence and spike rules watch it), and the learning rate of each param group
  (``lr/pg0``, ``lr/pg1``, ``lr/pg2``). The losses are detached tensors left on the device: no
  ``.item()``, no device sync in the training loop.
- every epoch, at the step of the epoch's last batch: ``trainer.metrics`` (``metrics/precision(B)``,
  ``metrics/recall(B)``, ``metrics/mAP50(B)``, ``metrics/mAP50-95(B)``, ``val/box_loss``, ...).
  The final validation of ``best.pt`` that Ultralytics runs after the last epoch goes to the step
  after the last batch (Ultralytics' own loggers put it one epoch later), so it does not overwrite
  the last epoch's values.
- the training arguments (``trainer.args``) as the run's config; the run's name defaults to the
  name of the trainer's save directory (``train``, ``train2``...).

Stop on alert: when an alert whose rule is in ``stop_on`` fires, the trainer's ``stop`` flag is set;
Ultralytics then ends the epoch after the current batch, validates, saves and returns as usual (the
run ends as ``stopped``). In DDP training the flag is set at the end of an epoch only, where
Ultralytics shares rank zero's decision with every rank.

``trainer.loss_items`` is a dict of tensors in Ultralytics 8.4 and a tensor named by
``trainer.loss_names`` in older releases; both are read.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from losswatch.client import settings, wire
from losswatch.client.run import Run
from losswatch.integrations._common import is_number, plain_config, start_run

__all__ = ["attach", "LosswatchYOLO"]

log = logging.getLogger("losswatch")

EVENTS = ("on_pretrain_routine_start", "on_train_epoch_start", "on_train_batch_end", "on_fit_epoch_end",
          "on_train_end")


def _rank() -> int:
    """$RANK, or -1 outside a distributed job (Ultralytics' own convention)."""
    rank = settings.rank()
    return -1 if rank is None else rank


class LosswatchYOLO:
    """The callbacks :func:`attach` adds to a model; ``.run`` is the losswatch run once training started."""

    def __init__(self, run: Run | None = None, **init_kwargs: Any) -> None:
        self.run = run
        self._own_run = run is None
        self._init_kwargs = init_kwargs
        self._batch = 0  # index of the next batch within the epoch
        self._last_step = -1  # step of the last batch sent
        self._last_epoch = -1  # epoch of the last batch sent
        self._stopped = False
        self._finished = False
        self._keys: tuple[str, ...] = ()  # the keys whose kinds the run was told

    # ---- callbacks ------------------------------------------------------------------------------

    def on_pretrain_routine_start(self, trainer: Any) -> None:
        if _rank() not in (-1, 0):
            return
        config = plain_config(trainer.args)
        if self.run is not None:
            if self._own_run and self._finished:  # model.train() again: a new run
                self.run = None
            else:
                return
        init_kwargs = dict(self._init_kwargs)
        init_kwargs.setdefault("name", Path(str(getattr(trainer, "save_dir", "") or "train")).name or None)
        extra = init_kwargs.pop("config", None) or {}
        self.run = start_run(None, config={**config, **plain_config(extra)}, **init_kwargs)
        self._finished = False
        self._stopped = False
        self._last_step = self._last_epoch = -1
        self._keys = ()

    def on_train_epoch_start(self, trainer: Any) -> None:
        self._batch = 0

    def on_train_batch_end(self, trainer: Any) -> None:
        i = self._batch
        self._batch += 1
        run = self.run
        if run is None or self._finished:
            return
        step = trainer.epoch * len(trainer.train_loader) + i
        self._last_step, self._last_epoch = step, trainer.epoch
        values: dict[str, Any] = {}
        components = _loss_components(trainer)
        if components:
            total = None
            for name, value in components.items():
                values[f"train/{name}"] = value
                total = value if total is None else total + value
            if "train/loss" not in values:  # a single component named "loss" is the total already
                values["train/loss"] = total
        for index, group in enumerate(trainer.optimizer.param_groups):
            lr = group.get("lr")
            if lr is not None:
                values[f"lr/pg{index}"] = lr
        keys = tuple(values)
        if keys == self._keys:  # kinds stay with the run: say them once per set of keys
            run.log(values, step=step)
        else:
            self._keys = keys
            kinds = {k: wire.guess_kind(k) for k in keys}  # train/loss: loss, train/box_loss: loss_component
            run.log(values, step=step, kinds=kinds)
        if run.should_stop and _rank() == -1:
            self._stop(trainer, f"after batch {step}")

    def on_fit_epoch_end(self, trainer: Any) -> None:
        run = self.run
        if run is None or self._finished:
            return
        # the final validation of best.pt comes with trainer.epoch one past the last epoch trained
        final = trainer.epoch > self._last_epoch
        step = max(self._last_step + (1 if final else 0), 0)
        metrics = {k: v for k, v in (trainer.metrics or {}).items() if is_number(v)}
        if metrics:
            run.log_eval(metrics, step=step)
        if run.should_stop:
            self._stop(trainer, f"after epoch {trainer.epoch + 1}")

    def on_train_end(self, trainer: Any) -> None:
        if self.run is None or self._finished:
            return
        self._finished = True
        if self._own_run:
            self.run.finish("stopped" if self._stopped else "finished")
        else:
            self.run.flush()

    # ---- helpers --------------------------------------------------------------------------------

    def _stop(self, trainer: Any, when: str) -> None:
        if self._stopped:
            return
        self._stopped = True
        trainer.stop = True
        alerts = self.run.alerts if self.run is not None else []
        reason = ", ".join(f"{a.get('rule')} on {a.get('series')}" for a in alerts) or "an alert"
        log.warning("losswatch: stopping YOLO training %s: %s", when, reason)

    def callbacks(self) -> dict[str, Any]:
        return {event: getattr(self, event) for event in EVENTS}


def _loss_components(trainer: Any) -> dict[str, Any]:
    """Each loss component of the last batch as a detached tensor, by name (no device sync)."""
    items = getattr(trainer, "loss_items", None)
    if items is None:
        return {}
    if isinstance(items, dict):
        return {str(k): v.detach() if hasattr(v, "detach") else v for k, v in items.items()}
    names = list(getattr(trainer, "loss_names", ()) or ())
    if not hasattr(items, "detach"):
        return {}
    flat = items.detach().reshape(-1)
    if len(names) != flat.shape[0]:
        names = [f"loss{i}" for i in range(flat.shape[0])]
    return {name: flat[i] for i, name in enumerate(names)}


def attach(model: Any, *, run: Run | None = None, **init_kwargs: Any) -> LosswatchYOLO:
    """Add losswatch's callbacks to a ``YOLO`` model (or anything with ``add_callback(event, fn)``).

    Arguments are those of :func:`losswatch.init` (``project``, ``name``, ``tags``, ``config``
    merged over the training arguments, ``stop_on``, ``url``, ``token``...), or ``run=`` an existing
    run (neither started nor finished here). The run starts when training starts, on rank zero.
    Returns the callbacks object; its ``.run`` is the run.
    """
    hooks = LosswatchYOLO(run=run, **init_kwargs)
    for event, fn in hooks.callbacks().items():
        model.add_callback(event, fn)
    return hooks
