"""PyTorch Lightning under its older package name, ``pytorch_lightning``: the same ``LosswatchLogger``
and ``LosswatchCallback`` as :mod:`losswatch.integrations.lightning` (see there), built on
``pytorch_lightning``'s ``Logger`` and ``Callback``, which a ``pytorch_lightning.Trainer`` requires::

    import pytorch_lightning as pl
    from losswatch.integrations.pytorch_lightning import LosswatchCallback, LosswatchLogger

    trainer = pl.Trainer(logger=LosswatchLogger(project="detector"), callbacks=[LosswatchCallback()])
"""

from __future__ import annotations

from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers.logger import Logger, rank_zero_experiment
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from losswatch.integrations._lightning import build

__all__ = ["LosswatchLogger", "LosswatchCallback"]

LosswatchLogger, LosswatchCallback = build(Callback, Logger, rank_zero_experiment, rank_zero_only, __name__)
