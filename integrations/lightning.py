"""PyTorch Lightning: a ``Logger`` and a per-batch ``Callback``.

::

    import lightning as L
    from losswatch.integrations.lightning import LosswatchCallback, LosswatchLogger

    logger = LosswatchLogger(project="detector", name="lr-3e-4")
    trainer = L.Trainer(logger=logger, callbacks=[LosswatchCallback()], max_epochs=10)
    trainer.fit(model, datamodule=dm)

- :class:`LosswatchLogger` receives what Lightning logs (``self.log(...)`` in the module, at Lightning's
  ``log_every_n_steps``, and every validation epoch) and the module's hyperparameters
  (``save_hyperparameters()``) as the run's config.
- :class:`LosswatchCallback` logs **every** training batch: the loss the ``training_step`` returned
  (``train/loss``, detached on its device, no sync) and each optimizer param group's learning rate
  (``lr``, or ``lr/pg0``, ``lr/pg1``... ``lr/opt1/pg0`` with several optimizers), at step
  ``trainer.fit_loop.total_batch_idx`` (the batch index across epochs). Without gradient accumulation
  that equals the step Lightning gives the logger, so a ``self.log("train/loss", ...)`` of the same
  value lands on the same point. When an alert whose rule is in the run's ``stop_on`` fires, it sets
  ``trainer.should_stop = True`` and Lightning ends the fit cleanly after that batch.

Lightning is imported here, so import this module only where Lightning is installed. A project on the
``pytorch_lightning`` package name imports ``losswatch.integrations.pytorch_lightning`` instead (the
same classes on that package's bases).
"""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from losswatch.integrations._lightning import build

__all__ = ["LosswatchLogger", "LosswatchCallback"]

LosswatchLogger, LosswatchCallback = build(Callback, Logger, rank_zero_experiment, rank_zero_only, __name__)
