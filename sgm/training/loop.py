"""The training loop: plain, model-agnostic, resumable to the bit.

A *task* (VAE, diffusion, LoRA, or a test's stand-in) says which parameters train and how
a batch becomes a loss; this loop owns everything else: AdamW with warm-up, gradient
accumulation and clipping, autocast, EMA, the JSONL log, sample grids and checkpoints.

Exact resume: a checkpoint holds the task's modules, the optimiser, the EMA, the loss
scaler, the step, and the states of the loop's noise generator and torch's global RNG.
Data are indexed (item ``i`` is a pure function of ``(seed, i)``), so the loader restarts at
item ``step * batch_size * grad_accumulation``. A run resumed from step ``k`` therefore
computes the same numbers as one that never stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from sgm.data.datasets import make_loader
from sgm.training.common import EMA, Precision, TrainSettings, autocast, grid_image, learning_rate

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint-latest.pt"
LOG_NAME = "log.jsonl"


class TrainingTask(Protocol):
    """What the loop needs from a model being trained."""

    def modules(self) -> dict[str, nn.Module]:
        """Every module whose state goes into a checkpoint (trainable or not)."""

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) pairs the optimiser updates; names are unique across modules."""

    def loss(self, batch: dict[str, Any], generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """The scalar loss of one micro-batch and metrics to log. Draw noise from ``generator``."""

    def after_step(self, batch: dict[str, Any], generator: torch.Generator, step: int) -> dict[str, float]:
        """Extra work after each optimiser step (e.g. a discriminator update); may do nothing."""

    def sample(self, generator: torch.Generator) -> torch.Tensor | None:
        """Preview images (N, 3, H, W) in [-1, 1] with the current (EMA) weights, or None."""

    def extra_state(self) -> dict[str, Any]:
        """Task state beyond ``modules()`` (e.g. a discriminator optimiser)."""

    def load_extra_state(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class TrainProgress:
    """One progress report (every optimiser step)."""

    step: int
    total_steps: int
    loss: float
    lr: float
    images_per_second: float
    metrics: dict[str, float]


@dataclass(frozen=True)
class TrainResult:
    step: int
    last_loss: float
    checkpoint_path: Path
    log_path: Path
    seconds: float


class EarlyStop(Exception):
    """Raised by a progress callback to stop after the current step (a checkpoint is kept)."""


def _named_trainable(task: TrainingTask) -> list[tuple[str, nn.Parameter]]:
    named = task.trainable()
    names = [name for name, _ in named]
    if len(set(names)) != len(names):
        raise ValueError("trainable parameter names must be unique (prefix them with the module name)")
    return named


@contextlib.contextmanager
def ema_weights(task: TrainingTask, ema: EMA | None) -> Iterator[None]:
    """Temporarily put the EMA weights into the task's parameters, restoring them exactly."""
    if ema is None:
        yield
        return
    named = _named_trainable(task)
    backup = {name: p.detach().clone() for name, p in named}
    ema.copy_to(iter(named))
    try:
        yield
    finally:
        with torch.no_grad():
            for name, p in named:
                p.copy_(backup[name])


def save_training_checkpoint(path: Path, task: TrainingTask, optimizer: torch.optim.Optimizer,
                             ema: EMA | None, scaler: torch.amp.GradScaler | None, step: int,
                             generator: torch.Generator, settings: TrainSettings) -> None:
    state = {
        "step": step,
        "modules": {name: module.state_dict() for name, module in task.modules().items()},
        "optimizer": optimizer.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "task": task.extra_state(),
        "settings": json.dumps(dataclasses.asdict(settings), default=str),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    temporary.replace(path)  # atomic: a crash mid-save never leaves a half-written checkpoint


def load_training_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def train(task: TrainingTask, dataset: torch.utils.data.Dataset, settings: TrainSettings, out_dir: str | Path,
          *, resume: bool = True, device: torch.device = torch.device("cpu"),
          on_progress: Callable[[TrainProgress], None] | None = None) -> TrainResult:
    """Train ``task`` on ``dataset`` until ``settings.steps``; resumes from ``out_dir`` if asked.

    Writes ``out_dir/log.jsonl`` (one JSON object per logged step), ``out_dir/samples/``
    (grids every ``sample_every`` steps) and ``out_dir/checkpoint-latest.pt``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path, log_path = out_dir / CHECKPOINT_NAME, out_dir / LOG_NAME
    named = _named_trainable(task)
    if not named:
        raise ValueError("the task has no trainable parameters")
    torch.manual_seed(settings.seed)
    generator = torch.Generator(device="cpu").manual_seed(settings.seed)
    optimizer = torch.optim.AdamW([p for _, p in named], lr=settings.lr, betas=settings.betas,
                                  weight_decay=settings.weight_decay)
    ema = EMA(iter(named), settings.ema_decay) if settings.ema_decay > 0 else None
    scaler = torch.amp.GradScaler(device.type) if settings.precision is Precision.FP16 else None
    step = 0
    if resume and checkpoint_path.exists():
        state = load_training_checkpoint(checkpoint_path)
        for name, module in task.modules().items():
            module.load_state_dict(state["modules"][name])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and state["ema"] is not None:
            ema.load_state_dict(state["ema"])
        if scaler is not None and state["scaler"] is not None:
            scaler.load_state_dict(state["scaler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        task.load_extra_state(state["task"])
        step = int(state["step"])
        logger.info("resumed from %s at step %d", checkpoint_path, step)

    images_per_step = settings.batch_size * settings.grad_accumulation
    loader = make_loader(dataset, settings.batch_size, start_index=step * images_per_step,
                         workers=settings.workers)
    batches = iter(loader)
    started = time.perf_counter()
    last_loss = float("nan")
    stop = False
    with log_path.open("a", encoding="utf-8") as log:
        while step < settings.steps and not stop:
            step_started = time.perf_counter()
            lr = learning_rate(settings, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            total_loss, metrics = 0.0, {}
            for _ in range(settings.grad_accumulation):
                batch = next(batches)
                with autocast(settings.precision, device):
                    loss, micro_metrics = task.loss(batch, generator)
                scaled = loss.float() / settings.grad_accumulation
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
                total_loss += float(scaled.detach())
                for key, value in micro_metrics.items():
                    metrics[key] = metrics.get(key, 0.0) + value / settings.grad_accumulation
            if scaler is not None:
                scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(
                [p for _, p in named], settings.grad_clip if settings.grad_clip > 0 else float("inf")
            )
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(iter(named))
            metrics.update(task.after_step(batch, generator, step))
            step += 1
            last_loss = total_loss
            seconds = time.perf_counter() - step_started
            progress = TrainProgress(step, settings.steps, total_loss, lr, images_per_step / max(seconds, 1e-9),
                                     metrics)
            if settings.log_every and (step % settings.log_every == 0 or step == settings.steps):
                record = {"step": step, "loss": total_loss, "lr": lr, "grad_norm": float(grad_norm),
                          "images_per_second": progress.images_per_second,
                          "elapsed": time.perf_counter() - started, **metrics}
                log.write(json.dumps(record) + "\n")
                log.flush()
            if settings.sample_every and step % settings.sample_every == 0:
                _save_samples(task, ema, out_dir, step, settings.seed)
            if settings.checkpoint_every and step % settings.checkpoint_every == 0:
                save_training_checkpoint(checkpoint_path, task, optimizer, ema, scaler, step, generator, settings)
            if on_progress is not None:
                try:
                    on_progress(progress)
                except EarlyStop:
                    stop = True
    save_training_checkpoint(checkpoint_path, task, optimizer, ema, scaler, step, generator, settings)
    return TrainResult(step, last_loss, checkpoint_path, log_path, time.perf_counter() - started)


def _save_samples(task: TrainingTask, ema: EMA | None, out_dir: Path, step: int, seed: int) -> None:
    # A separate generator: previews must not shift the training noise stream (exact resume).
    preview_generator = torch.Generator(device="cpu").manual_seed(seed + 1)
    with ema_weights(task, ema), torch.no_grad():
        images = task.sample(preview_generator)
    if images is None:
        return
    from PIL import Image

    from sgm.data.transforms import to_pixels

    columns = min(8, images.shape[0])
    (out_dir / "samples").mkdir(exist_ok=True)
    Image.fromarray(to_pixels(grid_image(images.float().cpu(), columns))).save(
        out_dir / "samples" / f"step-{step:07d}.png"
    )


def load_ema_into(task: TrainingTask, checkpoint_path: str | Path) -> None:
    """Load a training checkpoint's modules, then its EMA weights (if any), into ``task``."""
    state = load_training_checkpoint(Path(checkpoint_path))
    for name, module in task.modules().items():
        module.load_state_dict(state["modules"][name])
    if state["ema"] is not None:
        ema = EMA(iter(_named_trainable(task)), float(state["ema"]["decay"]))
        ema.load_state_dict(state["ema"])
        ema.copy_to(iter(_named_trainable(task)))
