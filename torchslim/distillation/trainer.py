"""The distillation trainer: ``train_distill`` (the run and its record) and ``distill`` (just the student).

The loop is ``fit_``'s (AdamW, linear warm-up then cosine decay via :func:`~torchslim.training.warmup_cosine`,
gradient clipping, progress on stderr through :mod:`torchslim.core.progress`), extended with what long distillation runs need: the
frozen teacher, feature taps and learned projections, optional bf16 autocast, evaluation every N steps
with early stopping, checkpoint/resume, and data parallelism under ``torchrun``: PyTorch DDP (teacher
outside DDP, rank 0 logs and writes), or FSDP2 when the student's training state does not fit one rank
(:mod:`torchslim.distillation.sharding`).

Example:
    >>> import torch, torch.nn as nn
    >>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    >>> teacher, student = nn.Linear(4, 3), nn.Linear(4, 3)
    >>> run = train_distill(student, teacher, lambda: [(x, y)], DistillConfig(epochs=2), progress=False)
    >>> run.steps, run.student is student, teacher.weight.grad is None
    (2, True, True)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn as nn

from torchslim.core.progress import progress as progress_task
from torchslim.distillation import sharding
from torchslim.distillation.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from torchslim.distillation.config import DistillConfig
from torchslim.distillation.data import Data, Epochs, batch_size_of, split_batch, to_device
from torchslim.distillation.distributed import DistInfo, all_mean, broadcast_value, dist_info
from torchslim.distillation.losses import get_loss
from torchslim.distillation.objective import StudentOutputs, add_projections, objective, teacher_outputs
from torchslim.distillation.rng_streams import DataStream
from torchslim.distillation.taps import FeatureTaps
from torchslim.errors import ConfigError
from torchslim.training import warmup_cosine

__all__ = ["DistillRun", "distill", "train_distill"]

EvalFn = Callable[[nn.Module], dict[str, float]]


@dataclass
class DistillRun:
    """What a distillation run produced.

    Attributes:
        student: the trained student (best evaluated weights when evaluations ran), in eval mode.
        history: one record per optimizer step: ``step`` (1-based), ``epoch``, ``loss`` (mean over
            processes), ``lr``, and the weighted value of the terms of each loss name.
        evals: one record per evaluation: ``step`` and the metrics.
        best: the best value of the first metric, or None without evaluations.
        stopped_early: whether patience ran out before the last step.
        steps: optimizer steps done in total (including those before a resume).
        parallel: how the processes trained: ``"none"`` (one process), ``"ddp"`` or ``"fsdp"``.
        seconds: wall time of the steps run in this call.
        samples: training samples (all processes) seen in this call.
    """

    student: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    best: float | None = None
    stopped_early: bool = False
    steps: int = 0
    seconds: float = 0.0
    samples: int = 0
    parallel: str = "none"

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


class _Loop:
    """One run's state (optimizer, schedule, step, best weights) and the steps that change it."""

    def __init__(self, student: nn.Module, teacher: nn.Module, data: Data, config: DistillConfig, **opts: Any) -> None:
        self.student, self.teacher, self.config = student, teacher, config
        self.eval_fn: EvalFn | None = opts["eval_fn"]
        self.higher_is_better: bool = opts["higher_is_better"]
        self.checkpoint_dir: str | None = opts["checkpoint_dir"]
        self.seed: int = opts["seed"]
        self.info: DistInfo = dist_info()
        self.device = next(student.parameters()).device
        self.parallel, why = sharding.resolve_parallel(opts["parallel"], student, teacher, self.info)
        if why and self.info.is_main and opts["progress"]:
            print(why, file=sys.stderr, flush=True)
        self.fsdp = self.parallel == "fsdp"
        # FSDP shards a copy of the student's module tree over the same tensors; the caller's student keeps
        # its class and hooks and gets the trained weights back in finish().
        self.original = student
        if self.fsdp:
            self.student = student = sharding.shell_copy(student)
        self.terms = [(i, t, get_loss(t.loss)) for i, t in enumerate(config.resolved_terms()) if t.weight > 0]
        self.uses_teacher = any(spec.reference == "teacher" for _, _, spec in self.terms)
        self.epochs = Epochs(data, config, self.seed, self.info)
        # The pipeline's own random draws (a shuffle from the global generator), apart from dropout's: read
        # again on resume, the epochs before the checkpoint give the same batches (rng_streams.py).
        self.data_stream = DataStream(self.seed)
        self.total = config.epochs * self.epochs.steps_per_epoch
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
        self.s_taps = FeatureTaps(student, [t.student for _, t, _ in self.terms])
        self.t_taps = FeatureTaps(teacher, [t.teacher for _, t, s in self.terms if s.reference == "teacher"])
        self.run = DistillRun(self.original, parallel=self.parallel)
        self.step, self.best, self.bad_evals = 0, None, 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.on_metric: Callable[[float], None] = lambda value: None

    def _teacher_feats(self, inputs: Any) -> dict[int, torch.Tensor]:
        if not self.uses_teacher:
            return {}
        with torch.no_grad():
            return teacher_outputs(self.teacher, self.t_taps, inputs, self.terms)

    def build(self) -> None:
        """Projections (sized on one batch in eval mode), DDP wrapper or FSDP shards, optimizer, schedule, fingerprint."""
        config = self.config
        self.outputs = StudentOutputs(self.student, self.terms, self.s_taps)
        inputs, target = split_batch(to_device(self.epochs.peek(), self.device))
        # Eval mode: sizing must not move BatchNorm statistics.
        self.student.eval()
        with torch.no_grad(), self.autocast:
            s_feats = self.outputs(inputs)
            t_feats = self._teacher_feats(inputs)
        add_projections(self.outputs, s_feats, t_feats)
        self.model: nn.Module = self.outputs
        if self.fsdp:
            sharding.shard_(self.outputs, self.student)
            sharding.release(self.original.parameters())  # their data now lives in the shards
        self.params = [p for p in self.outputs.parameters() if p.requires_grad]
        if self.parallel == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            # DDP must be told when a parameter gets no gradient (e.g. a pooler no loss reaches); asking
            # only then spares the extra graph traversal per step that costs.
            with self.autocast:
                loss, _ = objective(self.terms, self.outputs(inputs), t_feats, target, config.temperature)
            unused = any(g is None for g in torch.autograd.grad(loss, self.params, allow_unused=True))
            # The teacher stays outside: it is frozen, there is nothing of it to synchronise.
            self.model = DistributedDataParallel(self.outputs, find_unused_parameters=unused)
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        warmup = max(1, round(config.warmup * self.total))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: warmup_cosine(s, self.total, warmup)
        )
        self.fingerprint = {
            "config": config.to_dict(),
            "seed": self.seed,
            "steps_per_epoch": self.epochs.steps_per_epoch,
            "world_size": self.info.world_size,
            "student_params": sum(p.numel() for p in self.outputs.parameters()),
        }
        if self.fsdp:  # its checkpoints hold one rank's shards
            self.fingerprint["parallel"] = "fsdp"

    @property
    def checkpoint_name(self) -> str:
        """The checkpoint file: one for the run, or one per rank under FSDP (each holds its shards)."""
        if self.fsdp:
            return f"distill-checkpoint-rank{self.info.rank}-of-{self.info.world_size}.pt"
        return CHECKPOINT_NAME

    def restore(self, resume: bool) -> None:
        saved = None
        if self.checkpoint_dir and resume:
            saved = load_checkpoint(self.checkpoint_dir, self.fingerprint, name=self.checkpoint_name)
        if self.fsdp:
            self._check_rank_checkpoints(saved)
        if saved is None:
            return
        if self.fsdp:
            saved["outputs"] = sharding.as_dtensors_like(saved["outputs"], self.outputs.state_dict())
            saved["optimizer"] = sharding.optimizer_from_local(saved["optimizer"], self.params)
            if saved["best_state"] is not None:
                saved["best_state"] = sharding.as_dtensors_like(saved["best_state"], self.student.state_dict())
        self.outputs.load_state_dict(saved["outputs"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng"])
        self.step, self.best, self.bad_evals = saved["step"], saved["best"], saved["bad_evals"]
        self.best_state = saved["best_state"]
        self.run.history, self.run.evals = list(saved["history"]), list(saved["evals"])

    def _check_rank_checkpoints(self, saved: dict[str, Any] | None) -> None:
        """Refuse FSDP checkpoints whose ranks stopped at different steps (a kill between their writes)."""
        import torch.distributed as dist

        steps: list[Any] = [None] * self.info.world_size
        dist.all_gather_object(steps, None if saved is None else saved["step"])
        if len(set(steps)) > 1:
            found = ", ".join(f"rank {r}: {'none' if s is None else f'step {s}'}" for r, s in enumerate(steps))
            raise ConfigError(
                f"the per-rank checkpoints in {self.checkpoint_dir} are not from one step ({found}); "
                "delete them to start over"
            )

    def checkpoint(self) -> None:
        # Under FSDP every rank writes its own shards (no collective: a Ctrl-C stops the ranks at
        # different points of a step); otherwise rank 0 writes the one replicated state.
        if not (self.checkpoint_dir and (self.info.is_main or self.fsdp)):
            return
        outputs, optimizer, best = self.outputs.state_dict(), self.optimizer.state_dict(), self.best_state
        if self.fsdp:
            outputs, optimizer = sharding.local_tensors(outputs), sharding.local_tensors(optimizer)
            best = sharding.local_tensors(best)
        state = {
            "fingerprint": self.fingerprint,
            "step": self.step,
            "outputs": outputs,
            "optimizer": optimizer,
            "scheduler": self.scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "best": self.best,
            "bad_evals": self.bad_evals,
            "best_state": best,
            "history": self.run.history,
            "evals": self.run.evals,
        }
        save_checkpoint(self.checkpoint_dir, state, name=self.checkpoint_name)

    def evaluate(self) -> bool:
        """Evaluate (rank 0, or every rank under FSDP, whose sharded forward needs them all; rank 0's figures
        are shared with all), keep the best weights; True when patience has run out."""
        metrics: dict[str, float] = {}
        if self.info.is_main or self.fsdp:
            self.student.eval()
            try:
                metrics = {k: float(v) for k, v in self.eval_fn(self.student).items()}  # type: ignore[misc]
            finally:
                self.student.train()
            if not metrics:
                raise ValueError("eval_fn returned no metric")
        # Every process gets rank 0's figures, so all agree on early stopping.
        metrics = broadcast_value(metrics, self.info)
        self.run.evals.append({"step": self.step, **metrics})
        value = next(iter(metrics.values()))
        if self.best is None or (value > self.best if self.higher_is_better else value < self.best):
            self.best, self.bad_evals = value, 0
            self.best_state = {k: v.detach().clone() for k, v in self.student.state_dict().items()}
        else:
            self.bad_evals += 1
        self.on_metric(value)
        return self.config.patience > 0 and self.bad_evals >= self.config.patience

    def train_step(self, batch: Any, epoch: int) -> dict[str, float]:
        """One optimizer step on ``batch``; returns its history record."""
        inputs, target = split_batch(to_device(batch, self.device))
        with self.autocast:
            s_feats = self.model(inputs)
            t_feats = self._teacher_feats(inputs)
        loss, values = objective(self.terms, s_feats, t_feats, target, self.config.temperature)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.clip_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.run.samples += batch_size_of(inputs) * self.info.world_size
        # One collective for the total and every term: the logged loss is the global-batch mean.
        logged = all_mean(torch.stack([loss.detach(), *[v.detach() for v in values.values()]]), self.info).tolist()
        record = {"step": self.step, "epoch": epoch + 1, "loss": logged[0], "lr": self.scheduler.get_last_lr()[0]}
        for (_, term, _), v in zip(self.terms, logged[1:], strict=True):
            record[term.loss] = record.get(term.loss, 0.0) + v
        self.run.history.append(record)
        return record

    def train(self, on_step: Callable[[dict[str, float]], None]) -> None:
        """Every remaining step; evaluates and checkpoints on schedule; a Ctrl-C checkpoints, then re-raises."""
        try:
            last_eval = self._epochs(on_step)
        except KeyboardInterrupt:
            self.checkpoint()  # DESIGN: Ctrl-C leaves a resumable checkpoint (exit code 130)
            raise
        if self.eval_fn is not None and last_eval != self.step and not self.run.stopped_early:
            self.evaluate()

    def finish(self) -> None:
        """Load the best evaluated weights; under FSDP, write the full trained weights into the caller's
        student on every rank."""
        if self.best_state is not None:
            self.student.load_state_dict(self.best_state)
        if self.fsdp:
            sharding.gather_into(self.original, self.student)

    def _epochs(self, on_step: Callable[[dict[str, float]], None]) -> int:
        """The epoch loop; returns the step of the last evaluation."""
        cfg, spe = self.config, self.epochs.steps_per_epoch
        last_eval = self.step
        if self.step >= self.total:
            return last_eval  # resumed from the checkpoint of a finished run: nothing to replay
        self.student.train()
        for epoch in range(cfg.epochs):
            batches = self.data_stream.iterate(partial(self.epochs.epoch, epoch))
            if self.step >= (epoch + 1) * spe and not self.epochs.stateful:
                continue  # a Dataset epoch is a pure function of (seed, epoch): nothing to replay
            for b, batch in enumerate(batches):
                if epoch * spe + b < self.step:
                    # Done before the checkpoint. Read, not skipped: a callable's pipeline may seed lazily
                    # (generators, augmentation) and must advance exactly as in the first run.
                    continue
                on_step(self.train_step(batch, epoch))
                end_of_epoch = b == spe - 1
                stop = False
                if self.eval_fn is not None and (
                    (cfg.eval_every and self.step % cfg.eval_every == 0)
                    or (not cfg.eval_every and end_of_epoch)
                    or self.step == self.total
                ):
                    stop, last_eval = self.evaluate(), self.step
                if end_of_epoch or (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0):
                    self.checkpoint()
                if stop:
                    self.run.stopped_early = self.step < self.total
                    return last_eval
        return last_eval


def train_distill(
    student: nn.Module,
    teacher: nn.Module,
    data: Data,
    config: DistillConfig | None = None,
    *,
    eval_fn: EvalFn | None = None,
    higher_is_better: bool = True,
    checkpoint_dir: str | None = None,
    resume: bool = True,
    seed: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    desc: str = "distilling",
    parallel: str = "auto",
) -> DistillRun:
    """Train ``student`` in place to imitate ``teacher`` and return the run's record.

    The teacher is put in eval mode with ``requires_grad`` off for the run (both restored afterwards),
    runs under ``torch.no_grad``, is never wrapped by DDP and never enters the optimizer. In a
    ``torchrun`` process group the student (with its projections) is wrapped in
    ``DistributedDataParallel``; rank 0 shows progress, evaluates and writes checkpoints. When its
    training state does not fit one rank (or ``parallel="fsdp"``), it is sharded over the ranks with
    FSDP2 instead (:mod:`torchslim.distillation.sharding`): every rank evaluates (``eval_fn`` runs on
    each, rank 0's figures count) and writes its own shards as its checkpoint, and at the end every rank's
    ``student`` holds the full trained weights. The run is
    seeded in a forked RNG, so the caller's global RNG is left as it was.
    The student is returned in eval mode with no ``.grad`` left on its parameters (``requires_grad``
    as it came in), so it compiles and runs as the same weights reloaded from disk do.

    Args:
        student: the model to train (updated in place).
        teacher: the frozen reference model; must share no parameter with ``student``.
        data: a ``Dataset`` of ``(inputs, target)`` / ``(inputs,)`` items (batched by
            ``config.batch_size`` through a ``DistributedSampler``), or a callable returning a fresh
            iterable of such batches per epoch (``Context.train_data``).
        config: the objective and schedule; default ``DistillConfig()``.
        eval_fn: ``model -> {metric: value}``; the first metric drives early stopping and best-weight
            selection. Give a validation split here, never the test split.
        higher_is_better: direction of the first metric.
        checkpoint_dir: folder for checkpoints; None: no checkpoints.
        resume: continue from the checkpoint in ``checkpoint_dir`` when there is one.
        seed: overrides ``config.seed``.
        device: where to train (student and teacher are moved there); default: the student's device.
        progress: report progress with epoch, loss and metric on stderr (rank 0): a bar with the time
            left on a terminal, a plain line at a fixed interval elsewhere (:mod:`torchslim.core.progress`).
        desc: label of the progress bar.
        parallel: ``"auto"`` (FSDP when DDP's per-rank state would not fit, else DDP), ``"ddp"`` or
            ``"fsdp"``; only used under ``torchrun`` (``"fsdp"`` outside a process group is refused).
            If an FSDP run fails, the student's parameters are left empty (their data lived in the
            shards): rerun it with ``checkpoint_dir`` to resume.

    Returns:
        A :class:`DistillRun` with the student, per-step history and evaluations.

    Raises:
        ConfigError: shared parameters, a label loss without labels, a changed config on resume,
            widths a loss cannot bridge, no batches, an unknown ``parallel``.
    """
    config = config if config is not None else DistillConfig()
    if not isinstance(config, DistillConfig):
        raise ConfigError(f"config must be a DistillConfig, got {type(config).__name__}")
    if {id(p) for p in student.parameters()} & {id(p) for p in teacher.parameters()}:
        raise ConfigError("student and teacher share parameters; distill into a separate copy (copy.deepcopy)")
    if device is not None:
        student.to(device)
        teacher.to(device)
    if next(student.parameters(), None) is None:
        raise ConfigError("the student has no parameters to train")
    seed = config.seed if seed is None else seed
    loop = _Loop(
        student,
        teacher,
        data,
        config,
        eval_fn=eval_fn,
        higher_is_better=higher_is_better,
        checkpoint_dir=checkpoint_dir,
        seed=seed,
        parallel=parallel,
        progress=progress,
    )
    teacher_mode = (teacher.training, [p.requires_grad for p in teacher.parameters()])
    teacher.eval().requires_grad_(False)
    cuda = [loop.device.index or 0] if loop.device.type == "cuda" else []
    metric = ""

    def on_step(record: dict[str, float]) -> None:
        bar.advance(status=f"epoch {int(record['epoch'])}/{config.epochs}  loss {record['loss']:.4f}{metric}")

    def on_metric(value: float) -> None:
        nonlocal metric
        metric = f"  metric {value:.4f}"

    try:
        with (
            torch.random.fork_rng(devices=cuda),
            loop.s_taps,
            loop.t_taps,
            progress_task(loop.total, desc, unit="steps", enabled=progress and loop.info.is_main) as bar,
        ):
            torch.manual_seed(seed)
            loop.build()
            loop.restore(resume)
            bar.skip(loop.step)  # steps done before a resume
            loop.on_metric = on_metric
            start = time.perf_counter()
            loop.train(on_step)
            loop.run.seconds = time.perf_counter() - start
            loop.finish()
    finally:
        teacher.train(teacher_mode[0])
        for p, flag in zip(teacher.parameters(), teacher_mode[1], strict=True):
            p.requires_grad_(flag)
    run = loop.run
    run.steps, run.best = loop.step, loop.best
    # The last step's gradients would stay on the parameters. A later bf16 cast keeps them float32, and
    # Dynamo breaks the graph at every parameter whose .grad dtype differs from its own (running those
    # layers eagerly, so the compiled model's outputs differ in the last bits from the same weights
    # reloaded); they also hold as much memory as the weights. The student leaves as a reloaded one.
    for p in student.parameters():
        p.grad = None
    student.eval()
    return run


def distill(
    student: nn.Module,
    teacher: nn.Module,
    data: Data,
    config: DistillConfig | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Distil ``teacher`` into ``student`` in place and return the student (see :func:`train_distill`).

    Hinton et al. 2015 by default: ``alpha · T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)) + (1 − alpha) · CE``.

    Args:
        student: the model to train.
        teacher: the frozen reference model.
        data: a Dataset or a callable returning an iterable of ``(inputs, target)`` batches.
        config: the objective and schedule.
        **kwargs: ``eval_fn``, ``checkpoint_dir``, ``resume``, ``device``, ``progress``, ... of :func:`train_distill`.

    Returns:
        The trained student, in eval mode, with no ``.grad`` on its parameters.

    Example:
        >>> import torch, torch.nn as nn
        >>> x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
        >>> s = distill(nn.Linear(4, 2), nn.Linear(4, 2), lambda: [(x, y)], DistillConfig(epochs=1), progress=False)
        >>> s.training, all(p.grad is None for p in s.parameters())
        (False, True)
    """
    return train_distill(student, teacher, data, config, **kwargs).student
