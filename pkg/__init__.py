"""losswatch: watch training runs.

    import losswatch
    run = losswatch.init(project="detector", name="lr-3e-4", config={"lr": 3e-4})
    for step, batch in enumerate(loader):
        ...
        run.log({"train/loss": loss, "train/loss/box": box, "lr": lr}, step=step)
    run.finish()

This package needs nothing beyond the standard library; torch is imported only by the helpers
that take tensors, and the server lives in ``losswatch.server`` (``pip install 'losswatch[server]'``).
"""

from losswatch.client.errors import LosswatchError, ServerError, TransportError
from losswatch.client.run import Run, init

__all__ = ["init", "Run", "LosswatchError", "TransportError", "ServerError"]
__version__ = "0.1.0"
