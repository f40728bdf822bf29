"""``losswatch.SummaryWriter``: a drop-in for ``torch.utils.tensorboard.SummaryWriter``'s scalar API.

Switch by changing one import::

    # from torch.utils.tensorboard import SummaryWriter
    from losswatch import SummaryWriter

    writer = SummaryWriter("runs/lr-3e-4", project="detector")
    writer.add_scalar("train/loss", loss, step)          # a tensor is logged detached, no sync
    writer.add_scalars("loss", {"box": box, "cls": cls}, step)
    writer.add_hparams({"lr": 3e-4}, {"val/mAP50-95": 0.31})
    writer.close()

What maps to what:

- the writer is one losswatch run; its name is the last part of ``log_dir`` (TensorBoard's default
  ``runs/<date>_<host><comment>`` when ``log_dir`` is not given);
- ``add_scalar(tag, value, global_step)`` -> series ``tag`` at step ``global_step``, kind guessed from
  the tag (``wire.guess_kind``). Without ``global_step``, each tag counts its own steps from 0
  (TensorBoard would write them all at step 0);
- ``add_scalars(main_tag, {tag: value}, step)`` -> series ``main_tag/tag`` (TensorBoard writes
  them to sub-directories named that way);
- ``add_hparams(hparams, metrics)`` -> ``hparams`` merged into the run's config and ``metrics``
  logged as evaluation metrics at ``global_step`` (default: the last step written) of the same run
  (TensorBoard makes a separate sub-run);
- ``flush()`` waits until the server has everything; ``close()`` (or leaving a ``with`` block)
  finishes the run.

``walltime`` (seconds since the epoch) becomes the points' wall time, as in TensorBoard; without it the
time of the call is recorded.

Everything else of TensorBoard's writer (``add_histogram``, ``add_image``, ``add_graph``,
``add_text``, ...) is accepted and does nothing, with one :class:`LosswatchWarning` per method
the first time it is called, so that a script that also logs images keeps running unchanged.
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Mapping
from datetime import datetime
from types import TracebackType
from typing import Any

from losswatch.client.errors import LosswatchWarning
from losswatch.client.run import Run
from losswatch.integrations._common import start_run

__all__ = ["SummaryWriter"]

# The rest of torch.utils.tensorboard.SummaryWriter's public methods: accepted, ignored, warned once.
UNSUPPORTED = frozenset({
    "add_histogram", "add_histogram_raw", "add_image", "add_images", "add_image_with_boxes",
    "add_figure", "add_video", "add_audio", "add_text", "add_onnx_graph", "add_graph",
    "add_embedding", "add_pr_curve", "add_pr_curve_raw", "add_custom_scalars_multilinechart",
    "add_custom_scalars_marginchart", "add_custom_scalars", "add_mesh", "add_tensor",
})  # fmt: skip


class SummaryWriter:
    """Scalar part of TensorBoard's ``SummaryWriter``, sending to losswatch.

    The positional arguments are TensorBoard's. The keyword-only ones are losswatch's:
    ``project``, ``name`` (default: from ``log_dir``), ``config``, ``run`` (log into an existing
    :class:`~losswatch.Run` instead of starting one; ``close()`` then leaves it open), ``token``
    and any other argument of :func:`losswatch.init`.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str] | None = None,
        comment: str = "",
        purge_step: int | None = None,
        max_queue: int = 10,
        flush_secs: int = 120,
        filename_suffix: str = "",
        *,
        project: str | None = None,
        name: str | None = None,
        config: Mapping[str, Any] | None = None,
        run: Run | None = None,
        token: str | None = None,
        **init_kwargs: Any,
    ) -> None:
        if log_dir is None:
            stamp = datetime.now().strftime("%b%d_%H-%M-%S")
            log_dir = os.path.join("runs", f"{stamp}_{socket.gethostname()}{comment}")
        self.log_dir = os.fspath(log_dir)
        self._own_run = run is None
        self._token = token
        self._config: dict[str, Any] = dict(config or {})
        run_name = name or os.path.basename(os.path.normpath(self.log_dir)) or None
        self.run = start_run(run, config=self._config or None, project=project, name=run_name,
                             token=token, **init_kwargs)
        self._next_step: dict[str, int] = {}
        self._last_step = 0
        self._warned: set[str] = set()
        self._closed = False

    # ---- TensorBoard's scalar API ---------------------------------------------------------------

    def get_logdir(self) -> str:
        return self.log_dir

    def add_scalar(
        self,
        tag: str,
        scalar_value: Any,
        global_step: int | None = None,
        walltime: float | None = None,
        new_style: bool = False,
        double_precision: bool = False,
    ) -> None:
        step = self._step(tag, global_step)
        self.run.log({tag: scalar_value}, step=step, wall_time=walltime)

    def add_scalars(
        self,
        main_tag: str,
        tag_scalar_dict: Mapping[str, Any],
        global_step: int | None = None,
        walltime: float | None = None,
    ) -> None:
        if global_step is None:
            for tag, value in tag_scalar_dict.items():
                self.add_scalar(f"{main_tag}/{tag}", value, walltime=walltime)
            return
        step = int(global_step)
        self._last_step = max(self._last_step, step)
        self.run.log({f"{main_tag}/{tag}": value for tag, value in tag_scalar_dict.items()}, step=step,
                     wall_time=walltime)

    def add_hparams(
        self,
        hparam_dict: Mapping[str, Any],
        metric_dict: Mapping[str, Any],
        hparam_domain_discrete: Mapping[str, list[Any]] | None = None,
        run_name: str | None = None,
        global_step: int | None = None,
    ) -> None:
        if not isinstance(hparam_dict, Mapping) or not isinstance(metric_dict, Mapping):
            raise TypeError("hparam_dict and metric_dict should be dictionaries.")
        self._config.update(hparam_dict)
        self.run.update(config=dict(hparam_dict))  # merged into the run's config, sent in the background
        if metric_dict:
            step = self._last_step if global_step is None else int(global_step)
            self.run.log_eval(dict(metric_dict), step=step)

    def flush(self) -> None:
        if not self._closed:
            self.run.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._own_run:
            self.run.finish()
        else:
            self.run.flush()

    def __enter__(self) -> SummaryWriter:
        return self

    def __exit__(
        self, tp: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if tp is None or not self._own_run:
            self.close()
            return
        self._closed = True
        self.run.finish("stopped" if issubclass(tp, KeyboardInterrupt) else "failed")

    # ---- the rest: accepted and ignored ----------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        if name not in UNSUPPORTED:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

        def ignored(*args: Any, **kwargs: Any) -> None:
            if name not in self._warned:
                self._warned.add(name)
                warnings.warn(
                    f"losswatch.SummaryWriter.{name}() does nothing: losswatch records scalars only "
                    "(add_scalar, add_scalars, add_hparams). Keep a TensorBoard writer for the rest.",
                    LosswatchWarning,
                    stacklevel=2,
                )

        return ignored

    def _step(self, tag: str, global_step: int | None) -> int:
        if global_step is None:
            step = self._next_step.get(tag, 0)
        else:
            step = int(global_step)
        self._next_step[tag] = step + 1
        self._last_step = max(self._last_step, step)
        return step

    def __repr__(self) -> str:
        return f"<losswatch.SummaryWriter log_dir={self.log_dir!r} run={self.run.id}>"
