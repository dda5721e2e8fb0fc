"""One training loop for every registered model.

    python -m training.train NAME [--profile default | --profile-file PATH] [--data data/] [--out runs/] [--resume]

AdamW, focal loss (or BCE) with optional label smoothing, an auxiliary digit cross-entropy when
digit labels exist, swap augmentation, a warm-up + cosine learning rate over the whole budget, an
exponential moving average (EMA) of the weights that is scored, kept and exported, and early
stopping that keeps the best EMA weights. Steps run in bf16 autocast with channels-last tensors on
a CPU that computes bf16 natively, fp16/bf16 autocast on CUDA, fp32 elsewhere or when asked
(``training.precision``). Every epoch writes a checkpoint (atomically) from which ``--resume``
continues exactly as if never stopped, mid-schedule included.

Layout under ``--out`` (``ensemble.layout.ArtifactLayout``): ``checkpoints/NAME.pt`` (resumable state,
not for git) and ``weights/NAME/{weights.safetensors, history.json, curves.png}``.

What trains is the registry's ``ModelConfig`` and the ``Profile`` (its ``Recipe`` holds every value of the
recipe: ``training.profiles``); where and how (folders, device, threads, resume) is one ``RunOptions``.
The file reads top to bottom: the run's options, ``train_model`` (the loop over the epochs, readable in one
sitting), then what it calls: the ``Trainer`` (the model, its optimiser state and one epoch), the epochs'
pairs, the losses and the step, the schedule and the weight average, and the run's identity and records.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from ensemble.atomic import atomic_path, atomic_write_text
from ensemble.contract import DIGIT_SIZE, PIXEL_MAX
from ensemble.layout import ArtifactLayout
from training.data import dataset_fingerprint, make_pairs
from training.datasets import TrainingData
from training.models import REGISTRY, ModelConfig, build_model, count_parameters, load_weights
from training.precision import PRECISIONS, StepMode, choose_mode, torch_threads
from training.privileged import CleanDecoder, distillation_loss, reconstruction_loss, teacher_run_key
from training.profiles import EMA_DECAY, PROFILES, TRAIN_SEVERITY, Profile, get_profile

EVAL_BATCH = 1024
SWAP_PROBABILITY = 0.5  # share of each batch whose digits are swapped (and labels flipped)
# Each epoch shuffles with its own generator, seeded model seed * EPOCH_SEED_STRIDE + epoch: distinct for
# every epoch of runs shorter than the stride, and the same after a resume.
EPOCH_SEED_STRIDE = 1000


@dataclass(frozen=True)
class RunOptions:
    """Where and how one model trains; what it trains comes from the registry and the profile."""

    data_dir: Path = Path("data")
    out: Path = Path("runs")
    profile: str = "default"  # a name in PROFILES, or the path of a profile file (training.profiles.get_profile)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto | fp32 | bf16 (training.precision)
    threads: int | None = None  # torch CPU threads (None: torch's default)
    resume: bool = False  # continue this run from its checkpoint
    force: bool = False  # retrain a model that is already trained
    progress: bool = True
    position: int = 0  # row of the progress bar, for models trained side by side
    teacher: Path | None = None  # a run folder holding this model trained on clean digits (Recipe.train_on_clean)

    def __post_init__(self):
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        object.__setattr__(self, "out", Path(self.out))
        if self.teacher is not None:
            object.__setattr__(self, "teacher", Path(self.teacher))


# --------------------------------------------------------------------------- one model: the loop

def train_model(name: str, options: RunOptions = RunOptions(), data: TrainingData | None = None,
                on_epoch_end: Callable[[int], None] | None = None) -> dict:
    """Train one registered model; returns its result row (accuracies, time, parameter count).

    With ``options.resume`` a checkpoint of the same run continues where it stopped; ``options.force``
    retrains a model that is already trained with the same configuration and data.
    """
    config, prof, layout = REGISTRY[name], get_profile(options.profile), ArtifactLayout(options.out)
    if prof.recipe.teacher_distill_weight > 0 and options.teacher is None:
        raise ValueError(f"the profile {options.profile!r} distils from a teacher: give its run folder (--teacher)")
    device = resolve_device(options.device)  # before loading data: a missing GPU is said at once
    mode = choose_mode(device, config.tower, options.precision)
    key = run_key(name, options.profile, options.data_dir, mode, options.teacher)
    if not options.force and is_trained(layout, name, key, prof.epochs):
        return {**json.loads(layout.history(name).read_text())["result"], "status": "skipped"}
    if options.progress:
        tqdm.write(f"{name} trains in {mode.name}: {mode.reason}")
    with torch_threads(options.threads):  # put back after: a caller in this process keeps its own
        data = data or TrainingData.load(options.data_dir, prof.max_train_pairs, prof.max_val_pairs)
        distils = prof.recipe.teacher_distill_weight > 0
        teacher = load_weights(name, options.teacher, options.profile) if distils else None
        trainer = Trainer(config, prof, device, steps_per_epoch(data, prof), mode, teacher)
        if options.resume and not options.force:
            trainer.load_checkpoint(layout.checkpoint(name), key)

        train_epochs(trainer, data, layout, key, options, on_epoch_end)
        result = finished_result(trainer, data)
        save_trained(layout, trainer, key, options, result)
    return {**result, "status": "trained"}


def train_epochs(trainer: Trainer, data: TrainingData, layout: ArtifactLayout, key: str, options: RunOptions,
                 on_epoch_end: Callable[[int], None] | None = None) -> None:
    """The epochs left of the budget: each trains, is scored on the validation sets and checkpointed."""
    name = trainer.config.name
    pairs = EpochPairs(data, trainer.config.seed, trainer.prof)
    for epoch in range(trainer.state["epoch"], trainer.prof.epochs):
        if trainer.stopped_early:
            break
        epoch_start = time.perf_counter()
        x, y, digits, clean = pairs.get(epoch)
        train = trainer.train_one_epoch(x, y, digits, epoch, options, clean)
        val = trainer.evaluate(data.val.x, data.val.y)
        row = {"epoch": epoch + 1, "train_loss": train["loss"], "train_acc": train["acc"], "val_loss": val["loss"],
               "val_acc": val["acc"], "lr": trainer.optimizer.param_groups[0]["lr"]}
        row.update({f"{split}_acc": trainer.evaluate(shifted.x, shifted.y)["acc"]
                    for split, shifted in data.shifted_val.items()})
        row["seconds"] = time.perf_counter() - epoch_start
        trainer.end_epoch(row)
        trainer.save_checkpoint(layout.checkpoint(name), key)
        if options.progress:
            shifted_text = " ".join(f"{k[4:-4]}={v:.4f}" for k, v in row.items() if k.startswith("val_sev"))
            tqdm.write(f"{name} epoch {epoch + 1}: train_acc={train['acc']:.4f} val_acc={val['acc']:.4f} "
                       f"{shifted_text} ({row['seconds']:.0f}s)")
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1)
    pairs.close()


def finished_result(trainer: Trainer, data: TrainingData) -> dict:
    """The result row of a finished run, scored with its best weights."""
    state, model = trainer.state, trainer.best_model()
    result = {"name": trainer.config.name, "params": count_parameters(model), "epochs": state["epoch"],
              "val_acc": state["best_acc"], "train_seconds": round(sum(h["seconds"] for h in state["history"]), 1)}
    best = next(h for h in state["history"] if h["val_acc"] == state["best_acc"])
    result.update({k: v for k, v in best.items() if k.startswith("val_sev")})
    if data.test is not None:
        result["test_acc"] = trainer.evaluate(data.test.x, data.test.y)["acc"]
    return result


def save_trained(layout: ArtifactLayout, trainer: Trainer, key: str, options: RunOptions, result: dict) -> None:
    """The best weights, the learning curves and history.json (config, profile, result, every epoch)."""
    name = trainer.config.name
    layout.weights_dir(name).mkdir(parents=True, exist_ok=True)
    with atomic_path(layout.weights(name)) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in trainer.best_model().state_dict().items()},
                  str(tmp))
    save_curves(trainer.state["history"], layout.curves(name), f"{name} ({options.profile} profile)")
    atomic_write_text(layout.history(name), json.dumps(
        {"name": name, "run_key": key, "profile": options.profile, "config": trainer.config.to_dict(),
         "profile_settings": trainer.prof.to_dict(), "device": str(trainer.device), "step_mode": trainer.mode.name,
         "step_mode_reason": trainer.mode.reason,
         "result": result,
         "early_stopped": trainer.stopped_early, "history": trainer.state["history"]},
        indent=2, default=str) + "\n")



# --------------------------------------------------------------------------- the trainer

class Trainer:
    """One model with its optimiser, LR schedule, weight average and loss scaler, and its run's progress.

    ``model`` is what the optimiser steps; ``averaged`` is its exponential moving average, the model
    that is scored each epoch, kept when best and exported. ``state`` is what a checkpoint adds to the
    weights: the epochs done, the best validation accuracy and its (averaged) weights, the epochs since
    it improved, and the history rows.
    """

    def __init__(self, config: ModelConfig, prof: Profile, device: torch.device, steps_per_epoch: int,
                 mode: StepMode, teacher: torch.nn.Module | None = None):
        self.config, self.prof, self.device, self.mode = config, prof, device, mode
        seed_everything(config.seed)
        self.model = mode.prepare_model(build_model(config.name, prof.width, prof.feat_dim).to(device))
        self.averaged = AveragedModel(self.model, multi_avg_fn=update_ema, use_buffers=True)
        recipe = prof.recipe
        # Training-only parts (training.privileged): the decoder trains beside the model but is not in it, and the
        # teacher is frozen; neither is kept or exported.
        self.decoder = CleanDecoder(prof.feat_dim).to(device) if recipe.clean_reconstruction_weight > 0 else None
        if recipe.teacher_distill_weight > 0 and teacher is None:
            raise ValueError("the recipe distils from a teacher (teacher_distill_weight > 0), but none was given")
        self.teacher = None if teacher is None else teacher.to(device).eval().requires_grad_(False)
        trained = [*self.model.parameters(), *(self.decoder.parameters() if self.decoder is not None else [])]
        self.optimizer = torch.optim.AdamW(
            trained, lr=recipe.lr, weight_decay=recipe.weight_decay)
        self.total_steps = steps_per_epoch * prof.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: warmup_cosine(
            step, self.total_steps, recipe.warmup_fraction, recipe.final_lr_fraction))
        self.scaler = torch.amp.GradScaler(device.type, enabled=mode.needs_scaler)
        self.state = {"epoch": 0, "best_acc": -1.0, "best_state": None, "bad_epochs": 0, "history": []}

    @property
    def stopped_early(self) -> bool:
        return self.state["bad_epochs"] >= self.prof.patience

    def load_checkpoint(self, path: Path, key: str) -> bool:
        """Continue from ``path`` when it holds this very run (same key); True when it did."""
        if not path.is_file():
            return False
        ckpt = torch.load(path, map_location=self.device, weights_only=True)
        if ckpt.get("run_key") != key:
            return False
        self.model.load_state_dict(ckpt["model"])
        if self.decoder is not None:
            self.decoder.load_state_dict(ckpt["decoder"])
        self.averaged.load_state_dict(ckpt["averaged"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        self.state = {k: ckpt[k] for k in self.state}
        return True

    def save_checkpoint(self, path: Path, key: str) -> None:
        with atomic_path(path) as tmp:
            decoder = {} if self.decoder is None else {"decoder": self.decoder.state_dict()}
            torch.save({"run_key": key, "model": self.model.state_dict(), **decoder,
                        "averaged": self.averaged.state_dict(),
                        "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                        "scaler": self.scaler.state_dict(), "rng": rng_state(), **self.state}, tmp)

    def step(self, xb: torch.Tensor, yb: torch.Tensor, db: torch.Tensor | None,
             clean: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step on one batch, then the schedule and the weight average; (loss, logits).
        ``clean``: the batch's clean digits (pixels in [0, 1]), which the recipe's privileged terms need."""
        recipe = self.prof.recipe
        with self.mode.autocast(self.device):
            logits, digit_logits, features = self.model.forward_with_features(xb)
            loss = training_loss(self.config, logits, yb, digit_logits, db, recipe.aux_digit_weight)
            if self.decoder is not None:
                loss = loss + recipe.clean_reconstruction_weight * reconstruction_loss(self.decoder(features), clean)
            if self.teacher is not None:
                with torch.no_grad():
                    _, teacher_digit_logits = self.teacher(clean)
                loss = loss + recipe.teacher_distill_weight * distillation_loss(
                    digit_logits, teacher_digit_logits, recipe.distill_temperature)
        apply_step(self, loss)
        return loss.detach(), logits.detach()

    def train_one_epoch(self, x: torch.Tensor, y: torch.Tensor, digits: torch.Tensor | None, epoch: int,
                        options: RunOptions, clean: torch.Tensor | None = None) -> dict:
        """One pass over this epoch's pairs in shuffled batches, half of each batch swapped; ``clean`` holds the
        pairs' clean digits when the recipe learns from them."""
        self.model.train()
        if self.decoder is not None:
            self.decoder.train()
        generator = torch.Generator().manual_seed(self.config.seed * EPOCH_SEED_STRIDE + epoch)
        order = torch.randperm(len(x), generator=generator)
        swap = torch.rand(len(x), generator=generator) < SWAP_PROBABILITY
        total_loss, correct, seen = 0.0, 0, 0
        batch_size = self.prof.batch_size
        bar = tqdm(range(0, len(x), batch_size), desc=f"{self.config.name} epoch {epoch + 1}/{self.prof.epochs}",
                   unit="batch", leave=False, disable=not options.progress, position=options.position,
                   dynamic_ncols=True)
        for start in bar:
            idx = order[start:start + batch_size]
            xb, yb, db = swap_halves(x[idx], y[idx].float(), None if digits is None else digits[idx], swap[idx])
            cb = None if clean is None else to_input(swap_pictures(clean[idx], swap[idx]), self.device)
            xb, yb = to_input(xb, self.device), yb.to(self.device)
            loss, logits = self.step(xb, yb, None if db is None else db.to(self.device), cb)
            total_loss += loss.item() * len(idx)
            correct += ((logits > 0).float() == yb).sum().item()
            seen += len(idx)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.4f}")
        return {"loss": total_loss / seen, "acc": correct / seen}

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict:
        """Pair loss and accuracy of the averaged weights (what is kept and exported), in fp32."""
        logits, _ = predict_logits(self.averaged.module, x, self.device)
        loss = pair_loss(self.config, torch.from_numpy(logits), torch.from_numpy(y).float()).item()
        return {"loss": loss, "acc": float(((logits > 0).astype(np.int64) == y).mean())}

    def end_epoch(self, row: dict) -> None:
        """Record the epoch's row, keep the best averaged weights, count epochs without progress."""
        self.state["history"].append(row)
        if row["val_acc"] > self.state["best_acc"]:
            self.state["best_acc"], self.state["bad_epochs"] = row["val_acc"], 0
            self.state["best_state"] = {k: v.detach().clone() for k, v in self.averaged.module.state_dict().items()}
        else:
            self.state["bad_epochs"] += 1
        self.state["epoch"] = row["epoch"]

    def best_model(self) -> torch.nn.Module:
        """The averaged model with the best validation accuracy's weights, in eval mode."""
        self.averaged.module.load_state_dict(self.state["best_state"])
        return self.averaged.module.eval()



# --------------------------------------------------------------------------- the epochs' pairs

def steps_per_epoch(data: TrainingData, prof: Profile) -> int:
    """Optimiser steps in one epoch: the schedule spans epochs x this."""
    pairs = prof.pairs_per_epoch if data.sources is not None else len(data.train.x)
    return math.ceil(pairs / prof.batch_size)


def needs_clean(prof: Profile) -> bool:
    """Whether the recipe learns from the clean digits (training.privileged)."""
    recipe = prof.recipe
    return recipe.train_on_clean or recipe.clean_reconstruction_weight > 0 or recipe.teacher_distill_weight > 0


def epoch_pairs(data: TrainingData, seed: int, epoch: int, prof: Profile):
    """This epoch's training pairs as tensors (x, y, digits, clean): fresh ones from the source digits when the
    folder has them (course severity, a share nearly clean), else the training file itself. ``clean`` (the digits
    before the corruption) only when the recipe uses it; a teacher (``train_on_clean``) trains on it as ``x``."""
    clean = None
    if data.sources is not None:
        fresh = make_pairs(data.sources["train_images"], data.sources["train_labels"], prof.pairs_per_epoch,
                           seed=seed, epoch=epoch, severity=TRAIN_SEVERITY, clean_share=prof.clean_share,
                           workers=prof.data_workers, with_clean=needs_clean(prof))
        x, y, digits, clean = fresh["x"], fresh["y"], fresh["digits"], fresh.get("clean")
        if prof.recipe.train_on_clean:
            x, clean = clean, None
    elif needs_clean(prof):
        raise ValueError("this recipe learns from clean digits, which only a data folder with source digits "
                         "(python -m training.data build) can give")
    else:
        x, y, digits = data.train.x, data.train.y, data.train.digits
    as_tensor = [None if a is None else torch.from_numpy(a) for a in (x, y, digits, clean)]
    return tuple(as_tensor)



class EpochPairs:
    """A run's training pairs, epoch by epoch. When the profile draws them with several processes (a GPU
    trains faster than one CPU core corrupts digits), the next epoch's pairs are drawn in the background
    while this epoch trains; they are the same pairs either way (``make_pairs`` is a pure function)."""

    def __init__(self, data: TrainingData, seed: int, prof: Profile):
        self.data, self.seed, self.prof = data, seed, prof
        background = prof.data_workers > 1 and data.sources is not None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="next-epoch-pairs") if background else None
        self._next: tuple[int, Future] | None = None

    def get(self, epoch: int):
        if self._next is not None and self._next[0] == epoch:
            pairs = self._next[1].result()
        else:
            pairs = epoch_pairs(self.data, self.seed, epoch, self.prof)
        if self._pool is not None and epoch + 1 < self.prof.epochs:
            self._next = (epoch + 1, self._pool.submit(epoch_pairs, self.data, self.seed, epoch + 1, self.prof))
        return pairs

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)



# --------------------------------------------------------------------------- losses and the step

def focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 1.0, gamma: float = 2.0) -> torch.Tensor:
    """Binary focal loss on logits; targets may be smoothed (values in [0, 1])."""
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p = torch.sigmoid(logits)
    p_true = p * targets + (1 - p) * (1 - targets)
    return (alpha * (1 - p_true) ** gamma * bce).mean()


def pair_loss(config: ModelConfig, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    targets = y * (1 - config.label_smoothing) + 0.5 * config.label_smoothing
    if config.loss == "focal":
        return focal_loss(logits, targets)
    return F.binary_cross_entropy_with_logits(logits, targets)


def training_loss(config: ModelConfig, logits: torch.Tensor, y: torch.Tensor, digit_logits: torch.Tensor,
                  digits: torch.Tensor | None, aux_weight: float) -> torch.Tensor:
    """The pair loss, plus the auxiliary digit cross-entropy weighted ``aux_weight`` (``Recipe.aux_digit_weight``)
    when the pairs' digit labels are known."""
    loss = pair_loss(config, logits.float(), y)
    if digits is None:
        return loss
    return loss + aux_weight * F.cross_entropy(digit_logits.float().reshape(-1, 10), digits.reshape(-1))


def to_input(x_uint8: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x_uint8.to(device, non_blocking=True).float().div_(PIXEL_MAX)


def swap_pictures(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The masked pairs with their two digits swapped (a copy)."""
    x = x.clone()
    x[mask] = torch.cat([x[mask, :, DIGIT_SIZE:], x[mask, :, :DIGIT_SIZE]], dim=2)
    return x


def swap_halves(x: torch.Tensor, y: torch.Tensor, digits: torch.Tensor | None, mask: torch.Tensor):
    """Swap the two digits of the masked pairs and flip their labels: exact for this task."""
    x = swap_pictures(x, mask)
    y = torch.where(mask, 1 - y, y)
    if digits is not None:
        digits = torch.where(mask[:, None], digits.flip(1), digits)
    return x, y, digits


def apply_step(trainer: Trainer, loss: torch.Tensor) -> None:
    """What every training step does after its loss (the base models' ``Trainer`` and ``training.distill``'s
    student): backward, the optimiser step (loss-scaled where the mode needs it), the schedule, the weight average."""
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.scaler.scale(loss).backward()
    trainer.scaler.step(trainer.optimizer)
    trainer.scaler.update()
    trainer.scheduler.step()
    trainer.averaged.update_parameters(trainer.model)



@torch.no_grad()
def predict_logits(model: torch.nn.Module, x: np.ndarray, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Pair logits (N,) and digit logits (N, 2, 10) in eval mode."""
    model.eval()
    logits, digit_logits = [], []
    for start in range(0, len(x), EVAL_BATCH):
        xb = to_input(torch.from_numpy(x[start:start + EVAL_BATCH]), device)
        a, b = model(xb)
        logits.append(a.float().cpu())
        digit_logits.append(b.float().cpu())
    return torch.cat(logits).numpy(), torch.cat(digit_logits).numpy()



# --------------------------------------------------------------------------- the schedule and the weight average

def warmup_cosine(step: int, total_steps: int, warmup_fraction: float, final_fraction: float) -> float:
    """The learning rate at ``step`` as a fraction of the peak: a linear warm-up from the floor over
    ``warmup_fraction`` of the steps, then a cosine that reaches ``final_fraction`` at the last step
    (``Recipe.warmup_fraction``, ``Recipe.final_lr_fraction``)."""
    final = final_fraction
    warmup = max(1, round(warmup_fraction * total_steps))
    last = max(total_steps - 1, warmup)
    if step < warmup:
        return final + (1 - final) * step / warmup
    progress = min(1.0, (step - warmup) / max(1, last - warmup))
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))


def ema_decay(step: int) -> float:
    """The weight average's decay at its ``step``-th update: short at first, so that the average does not
    carry the random initial weights for thousands of steps (0.998**750 = 0.22), then ``EMA_DECAY``."""
    return min(EMA_DECAY, (1 + step) / (10 + step))



@torch.no_grad()
def update_ema(averaged: list[torch.Tensor], current: list[torch.Tensor], updates: torch.Tensor) -> None:
    """``AveragedModel``'s multi_avg_fn: an exponential moving average with ``ema_decay``'s warm-up."""
    decay = ema_decay(int(updates))
    if torch.is_floating_point(averaged[0]):
        torch._foreach_lerp_(averaged, current, 1 - decay)
    else:  # integer buffers (batch norm's step counter) are counts, not averages
        for a, c in zip(averaged, current, strict=True):
            a.copy_(c)



# --------------------------------------------------------------------------- the run's identity and records

def run_key(name: str, profile: str, data_dir: Path, mode: StepMode, teacher: Path | None = None) -> str:
    """Identifies a training run by its configuration, budget, step mode and data. The epoch budget is
    part of it: the learning-rate schedule spans the whole budget, so a longer run is another run."""
    prof = get_profile(profile)
    run = {"config": REGISTRY[name].to_dict(), "profile": prof.to_dict(), "mode": mode.name,
           "data": dataset_fingerprint(data_dir)}
    if prof.recipe.teacher_distill_weight > 0:
        run["teacher"] = teacher_run_key(teacher, name)
    payload = json.dumps(run, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def is_trained(layout: ArtifactLayout, name: str, key: str, epochs: int) -> bool:
    """Trained with this key, and either for the full epoch budget or stopped early."""
    if not (layout.history(name).is_file() and layout.weights(name).is_file()):
        return False
    record = json.loads(layout.history(name).read_text())
    return record.get("run_key") == key and (record["result"]["epochs"] >= epochs or record["early_stopped"])


def resolve_device(device: str) -> torch.device:
    """Training's device, by the run time's rule (``ensemble.runtime.resolve_device``) as torch sees the GPU:
    ``auto`` is the GPU when there is a usable one, else the CPU; ``cuda`` without one is an error, said at once.
    ``cuda:N`` picks one GPU of several."""
    if device != "auto" and device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no usable GPU")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_curves(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    # Training loss includes the auxiliary digit cross-entropy when digit labels exist; val is the pair loss.
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train (pair + digit loss)")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "o-", label="val (pair loss)")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.plot(epochs, [h["train_acc"] for h in history], "o-", label="train")
    ax_acc.plot(epochs, [h["val_acc"] for h in history], "o-", label="val (severity 6)")
    for key in sorted(k for k in history[0] if k.startswith("val_sev")):
        ax_acc.plot(epochs, [h[key] for h in history], "--", label=key.replace("_acc", "").replace("_", " "))
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=list(REGISTRY))
    parser.add_argument("--profile", choices=list(PROFILES), default="default")
    parser.add_argument("--profile-file", metavar="PATH",
                        help="train with a profile file instead (e.g. the best trial of python -m training.tune)")
    parser.add_argument("--data", default="data")
    parser.add_argument("--out", default="runs")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: bf16 + channels-last where the hardware computes bf16 natively, else fp32")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint of this run")
    parser.add_argument("--force", action="store_true", help="retrain even if already trained")
    parser.add_argument("--teacher", metavar="RUN", help="the run folder of this model trained on clean digits, "
                        "for a profile that distils from it (training.privileged)")
    args = parser.parse_args(argv)
    options = RunOptions(data_dir=args.data, out=args.out, profile=args.profile_file or args.profile,
                         device=args.device, precision=args.precision, resume=args.resume, force=args.force,
                         teacher=args.teacher)
    print(json.dumps(train_model(args.name, options), indent=2))
    return 0



if __name__ == "__main__":
    sys.exit(main())
