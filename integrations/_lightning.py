"""The Lightning integration, built on either package name: ``lightning`` (``lightning.pytorch``) or
``pytorch_lightning``. Lightning checks ``isinstance`` against its own ``Callback`` and ``Logger``
classes, and the two packages have distinct ones, so :func:`build` makes the two classes on the
bases of one package; ``losswatch.integrations.lightning`` and
``losswatch.integrations.pytorch_lightning`` call it. Nothing here imports a framework (torch is
looked up only when a gradient norm is computed, from the parameters Lightning hands over).
"""

from __future__ import annotations

import logging
import re
import sys
from argparse import Namespace
from collections.abc import Mapping
from typing import Any

from losswatch.client.batching import NormParts
from losswatch.client.run import Run
from losswatch.integrations._common import is_number, plain_config, start_run

log = logging.getLogger("losswatch")

# Keys Lightning users give validation / test metrics: logged as evaluation metrics (kind "metric"
# unless the name says loss).
_EVAL_KEY = re.compile(r"^(val|valid|validation|test|eval)[_/.]", re.IGNORECASE)
_FINAL_STATUS = {"success": "finished", "finished": "finished", "failed": "failed", "aborted": "stopped",
                 "interrupted": "stopped"}




def _total_norm(tensors: list[Any], slow: bool) -> Any:
    """The 2-norm of all ``tensors`` together, as ``clip_grad_norm_`` computes it before clipping, with
    no sync. The fast way is one fused per-tensor norm (``torch._foreach_norm``: a kernel per device)
    whose results are logged as :class:`NormParts`: the collector thread stacks and reduces them for
    all the steps of a batch at once (the caller makes sure that the tensors are on one device); it
    returns None where it does not apply (sparse tensors). ``slow`` leaves sparse tensors out, gathers
    the norms on the first one's device and reduces them here (a 0-d tensor)."""
    torch = sys.modules["torch"]  # these are its tensors
    if not slow:
        try:
            norms = torch._foreach_norm(tensors, 2.0)
        except (RuntimeError, NotImplementedError):
            return None
        return NormParts(norms)
    dense = [t for t in tensors if not t.is_sparse]
    if not dense:
        return None
    norms = torch._foreach_norm(dense, 2.0)
    return torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]), 2.0)


def build(callback_base: type, logger_base: type, rank_zero_experiment: Any, rank_zero_only: Any,
          module: str) -> tuple[type, type]:
    """``(LosswatchLogger, LosswatchCallback)`` on the given Lightning bases, named as in ``module``."""
    Callback, Logger = callback_base, logger_base  # noqa: N806 - the names the class bodies read

    class LosswatchLogger(Logger):
        """A Lightning logger that sends to losswatch.

        Args: ``project``, ``name`` (the run's name), ``config`` (merged with the hyperparameters
        Lightning reports), ``tags``, ``token``, ``run`` (an existing :class:`~losswatch.Run`; the logger
        then neither starts nor finishes it) and any other argument of :func:`losswatch.init`
        (``stop_on=("divergence",)``, ``url=...``). The run starts on first use, on rank zero only.
        """

        def __init__(
            self,
            project: str | None = None,
            name: str | None = None,
            *,
            config: Mapping[str, Any] | None = None,
            tags: list[str] | None = None,
            token: str | None = None,
            run: Run | None = None,
            **init_kwargs: Any,
        ) -> None:
            super().__init__()
            self._project = project
            self._name = name
            self._config: dict[str, Any] = plain_config(config)
            self._tags = tags
            self._token = token
            self._run = run
            self._own_run = run is None
            self._init_kwargs = init_kwargs
            self._finalized = False
            self._is_eval: dict[str, bool] = {}  # key -> logged as an evaluation metric

        # ---- Lightning's Logger interface -----------------------------------------------------------

        @property
        def name(self) -> str | None:
            return self._name or self._project

        @property
        def version(self) -> str | None:
            return self.experiment.id if rank_zero_only.rank == 0 else None

        @property
        @rank_zero_experiment
        def experiment(self) -> Run:
            """The losswatch :class:`~losswatch.Run` (started here on first use)."""
            if self._run is None:
                self._run = start_run(
                    None, config=self._config or None, project=self._project, name=self._name, tags=self._tags,
                    token=self._token, **self._init_kwargs,
                )  # fmt: skip
            return self._run

        @rank_zero_only
        def log_hyperparams(self, params: dict[str, Any] | Namespace | None, *args: Any, **kwargs: Any) -> None:
            if params is None:
                return
            if isinstance(params, Namespace):
                params = vars(params)
            new = plain_config(params)
            if not new:
                return
            self._config.update(new)
            if self._run is None:  # not started yet: the config goes with the run's creation
                self.experiment  # noqa: B018 - starts the run
            else:
                self._run.update(config=new)  # merged into the run's config, sent by the sender thread

        @rank_zero_only
        def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
            run = self.experiment
            train: dict[str, Any] = {}
            evals: dict[str, Any] = {}
            is_eval = self._is_eval
            for key, value in metrics.items():
                if type(value) is not float and not is_number(value):  # Lightning hands floats: the fast case
                    continue
                flag = is_eval.get(key)
                if flag is None:
                    flag = is_eval[key] = bool(_EVAL_KEY.match(key))
                (evals if flag else train)[key] = value
            if step is None:
                step = run.step or 0
            if train:
                run.log(train, step=step)
            if evals:
                run.log_eval(evals, step=step)

        def save(self) -> None:
            """Lightning calls this after every ``log_metrics``: nothing to do (the client sends in the
            background)."""

        @rank_zero_only
        def finalize(self, status: str) -> None:
            if self._finalized or self._run is None:
                return
            self._finalized = True
            if not self._own_run:
                self._run.flush()
                return
            final = _FINAL_STATUS.get(status, "finished")
            if final == "finished" and self._run.should_stop:
                final = "stopped"  # ended early by a losswatch alert
            # fit() returns at once: the sender delivers the rest and the status in the background, and
            # at interpreter exit losswatch waits for it; experiment.finish() waits for it now
            self._run.finish(final, wait=False)


    class LosswatchCallback(Callback):
        """Logs every training batch's loss and learning rates; stops the fit on a ``stop_on`` alert.

        ``target`` is a :class:`LosswatchLogger` or a :class:`~losswatch.Run`; by default the first
        :class:`LosswatchLogger` of the trainer. ``key`` names the loss series. ``log_lr=False`` leaves
        out the learning rates. ``grad_norm`` (default ``"grad_norm"``; ``None``: off) is the total
        2-norm of the gradients of each optimizer step *before* clipping (Lightning's
        ``on_before_optimizer_step``), kept on its device, no sync. ``log_step_metrics`` (default on)
        logs, at every batch, every training value the module ``self.log``-ged with ``on_step`` (its
        loss components), under the names Lightning gives its loggers, whatever
        ``log_every_n_steps`` says; the logger still receives Lightning's own logging on its interval,
        which lands on the same points. In a multi-process job the stop decision is shared across ranks every
        ``stop_check_every`` batches (one small all-reduce), as Lightning's ``EarlyStopping`` does.
        """

        # Lightning calls every hook of every callback at every batch, each through a profiler context
        # (5-10 µs a call on CPU: 8 calls a batch cost more than all of losswatch's own work), and skips
        # a hook that is not callable. The per-batch hooks this callback does not use are None.
        on_train_batch_start = None
        on_before_backward = None
        on_after_backward = None
        on_before_zero_grad = None
        on_validation_batch_start = None
        on_validation_batch_end = None
        on_test_batch_start = None
        on_test_batch_end = None
        on_predict_batch_start = None
        on_predict_batch_end = None

        def __init__(
            self,
            target: LosswatchLogger | Run | None = None,
            *,
            key: str = "train/loss",
            log_lr: bool = True,
            stop_check_every: int = 20,
            grad_norm: str | None = "grad_norm",
            log_step_metrics: bool = True,
        ) -> None:
            super().__init__()
            self.grad_norm_key = grad_norm
            self.log_step_metrics = log_step_metrics
            self._grad_norm: Any = None  # the last optimizer step's norm (a tensor), logged with its batch
            # optimizer -> (its param_groups, their number, its params, whether they are on several devices)
            self._params: dict[int, tuple[Any, int, list[Any], bool]] = {}
            self._mixed = False  # gradients seen sparse: norms take the slow way
            self._names: dict[str, tuple[Any, str | None]] = {}  # result key -> (its metric, logger name or None)
            self._step_keys: dict[str, bool] = {}  # logged key -> whether it is a per-batch training value
            self._last_values: dict[str, Any] = {}  # key -> the tensor logged last (skip values not re-logged)
            self._target = target
            self.key = key
            self.log_lr = log_lr
            self.stop_check_every = max(1, stop_check_every)
            self._run: Run | None = None
            self._batches = 0
            self._stopped = False
            self._distributed = False
            self._lr_keys: list[list[str]] = []  # per optimizer, per param group (built once per layout)
            # (the trainer's optimizer list, each one's (param_groups, len), the (key, param group) pairs)
            self._lr_cache: tuple[Any, list[tuple[Any, int]], list[tuple[str, Any]]] | None = None
            self._layout: tuple[int, ...] = ()
            self._kinds_sent = False

        def _find_run(self, trainer: Any) -> Run | None:
            if isinstance(self._target, Run):
                return self._target
            logger = self._target
            if logger is None:
                logger = next((lg for lg in trainer.loggers if isinstance(lg, LosswatchLogger)), None)
            if logger is None:
                raise RuntimeError(
                    "LosswatchCallback found no LosswatchLogger among the trainer's loggers: pass "
                    "L.Trainer(logger=LosswatchLogger(...)) or LosswatchCallback(run) with a losswatch Run"
                )
            run = logger.experiment
            return run if isinstance(run, Run) else None  # a _DummyExperiment on other ranks

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            self._run = self._find_run(trainer)
            self._batches = 0
            self._distributed = trainer.world_size > 1
            self._layout = ()
            self._lr_cache = None
            self._kinds_sent = False
            self._grad_norm = None
            self._last_values = {}
            self._params = {}
            self._names = {}

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            # called every batch: keep it to a few microseconds (keys and kinds are worked out once)
            run = self._run
            self._batches += 1
            if run is not None:
                self._log_batch(trainer, run, outputs)
            if self._distributed or (run is not None and run.should_stop):
                self._check_stop(trainer, run)

        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            # after backward (and accumulation), before clipping and the step: the raw gradient norm
            if self.grad_norm_key is None or self._run is None:
                return
            groups = optimizer.param_groups
            params = self._params.get(id(optimizer))
            if params is None or params[0] is not groups or params[1] != len(groups):  # add_param_group
                flat = [p for g in groups for p in g["params"]]
                params = self._params[id(optimizer)] = (groups, len(groups), flat, len({p.device for p in flat}) > 1)
            grads = [p.grad for p in params[2] if p.grad is not None]
            if not grads:
                return
            total = _total_norm(grads, self._mixed or params[3])
            if total is None:  # sparse gradients: the slow way from now on
                self._mixed = True
                total = _total_norm(grads, True)
                if total is None:
                    return
            if self._grad_norm is not None:  # several optimizers: the norm of all their gradients
                total = _total_norm([self._as_tensor(self._grad_norm), self._as_tensor(total)], True)
            self._grad_norm = total

        @staticmethod
        def _as_tensor(norm: Any) -> Any:
            if type(norm) is NormParts:
                torch = sys.modules["torch"]
                return torch.linalg.vector_norm(torch.stack(list(norm.parts)), 2.0)
            return norm

        def _step_metrics(self, trainer: Any, values: dict[str, Any]) -> None:
            """What the module self.log-ged at this batch with on_step, as Lightning names it for its
            loggers (no sync: the tensors are Lightning's own step values). Read from the result
            collection as ``trainer.logged_metrics`` does, without building the progress bar's numbers
            (``.item()``: a device sync per value); each metric's name and whether it is a per-batch
            training value are worked out once (a few hundred nanoseconds a value at each batch)."""
            # the training epoch loop's results (trainer._results and fit_loop._results find the active
            # loop first: about a microsecond of enum compares at every batch)
            results = getattr(getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None), "_results", None)
            if results is None or not hasattr(results, "_forked_name"):  # another Lightning: the public way
                self._add_values(trainer.logged_metrics.items(), values)
                return
            names = self._names
            last = self._last_values
            loader = results.dataloader_idx
            for key, metric in results.items():
                seen = names.get(key)
                if seen is None or seen[0] is not metric:
                    seen = names[key] = (metric, self._name_of(results, metric))
                name = seen[1]
                if name is None or metric.has_reset or metric.meta.dataloader_idx != loader:
                    continue
                value = metric._forward_cache  # a one-element tensor: Lightning's self.log refuses others
                if value is None or name in values or last.get(name) is value:
                    continue  # not logged at this batch (the value of an earlier one is still cached)
                values[name] = value
                last[name] = value

        @staticmethod
        def _name_of(results: Any, metric: Any) -> str | None:
            """The name Lightning gives a result metric's step value in its loggers; None for what is
            not a per-batch training value (not for loggers, epoch-only, validation or test keys)."""
            meta = metric.meta
            if not (meta.logger and meta.on_step):
                return None
            name = results._forked_name(metric, True)[1]
            return None if _EVAL_KEY.match(name) or name.endswith("_epoch") or name == "epoch" else name

        def _add_values(self, items: Any, values: dict[str, Any]) -> None:
            kinds = self._step_keys
            last = self._last_values
            for key, value in items:
                ok = kinds.get(key)
                if ok is None:
                    ok = kinds[key] = not (_EVAL_KEY.match(key) or key.endswith("_epoch") or key == "epoch")
                if not ok or key in values or last.get(key) is value:
                    continue
                if type(value) is float or is_number(value):
                    values[key] = value
                    last[key] = value

        def _lr_groups(self, optimizers: list[Any]) -> list[tuple[str, Any]]:
            """(key, param group) of every optimizer's param groups, worked out again only when the
            optimizers or their groups change (a scheduler changes the lr inside the group)."""
            cached = self._lr_cache
            if cached is not None and cached[0] is optimizers and len(optimizers) == len(cached[1]):
                for opt, (groups, n) in zip(optimizers, cached[1], strict=True):
                    if opt.param_groups is not groups or len(groups) != n:
                        break
                else:
                    return cached[2]
            layout = tuple(len(opt.param_groups) for opt in optimizers)
            if layout != self._layout:
                self._layout = layout
                self._kinds_sent = False
                self._lr_keys = [
                    [f"lr/opt{i}/pg{j}" if len(layout) > 1 else ("lr" if n == 1 else f"lr/pg{j}") for j in range(n)]
                    for i, n in enumerate(layout)
                ]
            pairs = [pair for opt, keys in zip(optimizers, self._lr_keys, strict=True)
                     for pair in zip(keys, opt.param_groups, strict=True)]
            self._lr_cache = (optimizers, [(opt.param_groups, len(opt.param_groups)) for opt in optimizers], pairs)
            return pairs

        def _log_batch(self, trainer: Any, run: Run, outputs: Any) -> None:
            values: dict[str, Any] = {}
            loss = outputs.get("loss") if type(outputs) is dict or isinstance(outputs, Mapping) else outputs
            if loss is not None:  # a tensor (run.log detaches it) or a number; anything else is dropped there
                values[self.key] = loss
            if self.log_step_metrics:
                self._step_metrics(trainer, values)
            if self._grad_norm is not None:
                values[self.grad_norm_key] = self._grad_norm  # type: ignore[index]
                self._grad_norm = None
            if self.log_lr:
                for key, group in self._lr_groups(trainer.optimizers):
                    lr = group.get("lr")
                    if lr is not None:
                        values[key] = lr
            if not values:
                return
            if self._kinds_sent:
                run.log(values, step=trainer.fit_loop.total_batch_idx)
            else:  # kinds stay with the run: say them once
                kinds = {key: "lr" for keys in self._lr_keys for key in keys}
                kinds[self.key] = "loss"
                if self.grad_norm_key is not None:
                    kinds[self.grad_norm_key] = "grad_norm"
                run.log(values, step=trainer.fit_loop.total_batch_idx, kinds=kinds)
                self._kinds_sent = True

        def _check_stop(self, trainer: Any, run: Run | None) -> None:
            wants = run is not None and run.should_stop  # other ranks have no run: they follow rank zero
            if self._distributed:
                if self._batches % self.stop_check_every:
                    return
                stop = bool(trainer.strategy.reduce_boolean_decision(wants, all=False))
            else:
                stop = wants
            if stop and not self._stopped:
                self._stopped = True
                trainer.should_stop = True
                alerts = run.alerts if run is not None else []
                reason = ", ".join(f"{a.get('rule')} on {a.get('series')}" for a in alerts) or "an alert on rank zero"
                log.warning("losswatch: stopping the fit after batch %d: %s", trainer.fit_loop.total_batch_idx, reason)

    for cls in (LosswatchLogger, LosswatchCallback):
        cls.__module__ = module
        cls.__qualname__ = cls.__name__
    return LosswatchLogger, LosswatchCallback
