"""Distil the ensemble into one student of one tower's size; ``python -m export.student`` then exports it.

    python -m training.distill [--teacher models] [--data data] [--out runs/student] [--profile default]
                               [--architecture resnet] [--from-scratch] [--pairs N] [--epochs N]
                               [--alpha 0.7] [--temperature 2] [--threads N]
    python -m export.student runs/student [--data data] [--threads N] [--score FILE ...] [--install-into MODELS_DIR]

1. **Transfer pairs**: ``--pairs`` fresh pairs of the course's process from the *training* source digits
   (``training.data.make_pairs``, a seed of their own, the profile's share of nearly clean digits), scored once by
   the teacher, the ONNX ensemble through ``ensemble.runtime`` (no torch): its stacked probability (the course
   prior's answer) and its ten models' averaged digit posteriors. Cached in ``OUT/teacher_targets.npz`` (keyed by
   the teacher's fused graph and the draw), so another run with other loss settings does not score again.
2. **Student**: the ``--architecture`` registry entry's network (tower, head, width) at the profile's size, not a
   member of the ensemble; by default it starts from that member's trained weights in the teacher's folder
   (``--from-scratch``: from random weights). Trained ``--epochs`` passes over the transfer pairs (half of each batch
   swapped, targets swapped with them) with AdamW, the warm-up + cosine schedule and the weight average of
   ``training.train``, on the distillation loss (``distillation_loss``)::

       alpha * T^2 * [KL(p_T || s_T) + w KL(q_T || r_T)] + (1 - alpha) * [BCE(s, y) + w CE(r, digits)]

   p: the teacher's stacked probability, q: its averaged digit posteriors, s, r: the student's, each tempered at
   ``T`` (a probability's logit divided by T), w: the digit heads' weight; the true labels are the hard targets.
   The averaged weights are scored each epoch on the built validation pairs (val.npz: held-out training digits);
   the best are kept: ``OUT/weights/student/weights.safetensors``, with ``history.json`` beside them (what the
   student is, its teacher, the settings, every epoch).
3. **Export, int8, measurements, install**: ``python -m export.student OUT`` (``export.student``). Training stays
   below the export layer: only the orchestrator ``training.run_all`` reaches up into ``export``, so the student's
   export is a step of its own, not a call from here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from ensemble.atomic import atomic_path, atomic_write_text
from ensemble.course_data import CourseData, load_course_npz
from ensemble.layout import ArtifactLayout
from ensemble.runtime import Ensemble
from ensemble.student import NAME
from training.data import dataset_fingerprint, make_pairs
from training.models import REGISTRY, ModelConfig, build_from_config, count_parameters
from training.precision import choose_mode, torch_threads
from training.profiles import PROFILES, TRAIN_SEVERITY, Profile, Recipe
from training.train import (
    SWAP_PROBABILITY,
    apply_step,
    predict_logits,
    resolve_device,
    seed_everything,
    swap_halves,
    to_input,
    update_ema,
    warmup_cosine,
)

TRANSFER_SEED = 90_001  # the transfer pairs' own draw: not any base model's training pairs
STUDENT_SEED = 7
EPS = 1e-6  # teacher probabilities are kept in [EPS, 1 - EPS] before their logits are taken
TINY = 1e-30  # digit probabilities are kept above this before their logarithms are taken (float32: ~1e-38)


@dataclass(frozen=True)
class DistillSettings:
    """What the student learns from, and how."""

    architecture: str = "resnet"  # the registry entry whose network the student is
    init: bool = True  # start from that member's trained weights in the teacher's folder
    pairs: int = 32_000  # transfer pairs scored by the teacher
    epochs: int = 4  # passes over them
    alpha: float = 0.7  # weight of the soft (teacher) targets; 1 - alpha on the true labels
    temperature: float = 2.0
    digit_weight: float = Recipe().aux_digit_weight  # the digit heads' terms next to the pair's
    lr: float | None = None  # peak; default 1e-3 from the member's weights, the profile's recipe's from scratch
    weight_decay: float = 5e-4
    clean_share: float | None = None  # share of nearly clean digits (default: the profile's)


# --------------------------------------------------------------------------- the loss

def bernoulli_kl(p: torch.Tensor, logit_q: torch.Tensor) -> torch.Tensor:
    """KL(Bernoulli(p) || Bernoulli(sigmoid(logit_q))), per element."""
    return (p * (torch.log(p) - F.logsigmoid(logit_q)) + (1 - p) * (torch.log1p(-p) - F.logsigmoid(-logit_q)))


def tempered_probability(p: torch.Tensor, temperature: float) -> torch.Tensor:
    """sigmoid(logit(p) / T): a probability softened (T > 1) as a logit divided by T softens it."""
    p = p.clamp(EPS, 1 - EPS)
    return torch.sigmoid(torch.log(p / (1 - p)) / temperature).clamp(EPS, 1 - EPS)


def tempered_distribution(q: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(log(q) / T) over the last axis."""
    return torch.softmax(torch.log(q.clamp_min(TINY)) / temperature, dim=-1)


def distillation_loss(logit: torch.Tensor, digit_logits: torch.Tensor, teacher_p: torch.Tensor,
                      teacher_digits: torch.Tensor, y: torch.Tensor, digits: torch.Tensor, alpha: float,
                      temperature: float, digit_weight: float) -> torch.Tensor:
    """The student's loss on one batch (see the module docstring): soft terms at temperature ``T``, scaled by T^2
    so that their gradients keep their size as T changes (Hinton et al.), hard terms on the true labels.

    logit (B,), digit_logits (B, 2, 10): the student's; teacher_p (B,): the stacked P(left > right); teacher_digits
    (B, 2, 10): the averaged digit posteriors; y (B,) 0/1; digits (B, 2) the true classes. KL terms are summed over
    classes and averaged over pairs (and halves): PyTorch's ``batchmean``.
    """
    t = temperature
    logit, digit_logits = logit.float(), digit_logits.float()
    soft_pair = bernoulli_kl(tempered_probability(teacher_p, t), logit / t).mean()
    target = tempered_distribution(teacher_digits, t)
    student = F.log_softmax(digit_logits / t, dim=-1)
    soft_digits = (target * (torch.log(target.clamp_min(TINY)) - student)).sum(-1).mean()
    hard_pair = F.binary_cross_entropy_with_logits(logit, y.float())
    hard_digits = F.cross_entropy(digit_logits.reshape(-1, 10), digits.reshape(-1))
    soft = t * t * (soft_pair + digit_weight * soft_digits)
    return alpha * soft + (1 - alpha) * (hard_pair + digit_weight * hard_digits)


# --------------------------------------------------------------------------- the teacher's targets

@dataclass
class Targets:
    x: np.ndarray  # (N, 28, 56) uint8
    y: np.ndarray  # (N,) true labels
    digits: np.ndarray  # (N, 2) true classes
    probability: np.ndarray  # (N,) the teacher's stacked P(left > right)
    digit_probs: np.ndarray  # (N, 2, 10) the teacher's averaged digit posteriors


def teacher_scores(teacher: Ensemble, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's stacked probability (course prior) and averaged digit posteriors."""
    pred = teacher.predict(x, progress=len(x) > 4096)
    return pred.by_prior["course"].astype(np.float32), pred.digit_probs.mean(axis=1).astype(np.float32)


def transfer_targets(teacher: Ensemble, data_dir: Path, pairs: int, clean_share: float, cache: Path) -> Targets:
    """Fresh pairs from the training digits, scored by the teacher; read from ``cache`` when it holds this draw
    scored by this teacher."""
    key = hashlib.sha256(json.dumps({"teacher": teacher.manifest["artifacts"]["fused"]["sha256"],
                                     "data": dataset_fingerprint(data_dir), "pairs": pairs, "seed": TRANSFER_SEED,
                                     "clean_share": clean_share}, sort_keys=True).encode()).hexdigest()
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as npz:
            if str(npz["key"]) == key:
                return Targets(*(npz[k] for k in ("x", "y", "digits", "probability", "digit_probs")))
    with np.load(data_dir / "sources.npz", allow_pickle=False) as npz:
        images, labels = npz["train_images"], npz["train_labels"]
    drawn = make_pairs(images, labels, pairs, seed=TRANSFER_SEED, severity=TRAIN_SEVERITY, clean_share=clean_share,
                       progress=True)
    probability, digit_probs = teacher_scores(teacher, drawn["x"])
    targets = Targets(drawn["x"], drawn["y"], drawn["digits"], probability, digit_probs)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(cache) as tmp, open(tmp, "wb") as f:
        np.savez(f, key=np.array(key), **asdict(targets))
    return targets


# --------------------------------------------------------------------------- the student

def student_config(settings: DistillSettings) -> ModelConfig:
    member = REGISTRY[settings.architecture]
    return replace(member, name=NAME, seed=STUDENT_SEED, description=f"distilled student: {member.description}")


def build_student(settings: DistillSettings, prof: Profile, teacher_dir: Path) -> tuple[torch.nn.Module, str]:
    """The student network, from the member's trained weights when asked and present; (model, where from)."""
    seed_everything(STUDENT_SEED)
    model = build_from_config(student_config(settings), prof.width, prof.feat_dim)
    weights = ArtifactLayout(teacher_dir).weights(settings.architecture)
    if settings.init and weights.is_file():
        try:
            model.load_state_dict(load_file(weights))
        except RuntimeError as err:  # another width or embedding than this profile's
            raise SystemExit(f"{weights} was trained at another size than the {prof.width}-wide profile asked for: "
                             "pass the teacher's --profile, or --from-scratch") from err
        return model, f"{settings.architecture}'s trained weights ({weights})"
    return model, "random weights"


class StudentTrainer:
    """The student with its optimiser, schedule and weight average (``training.train``'s recipe)."""

    def __init__(self, model: torch.nn.Module, settings: DistillSettings, prof: Profile, steps: int,
                 device: torch.device):
        config = student_config(settings)
        self.settings, self.prof, self.device = settings, prof, device
        self.mode = choose_mode(device, config.tower, "auto")
        self.model = self.mode.prepare_model(model.to(device))
        self.averaged = AveragedModel(self.model, multi_avg_fn=update_ema, use_buffers=True)
        recipe = prof.recipe
        lr = settings.lr or (1e-3 if settings.init else recipe.lr)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=settings.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: warmup_cosine(
            s, steps, recipe.warmup_fraction, recipe.final_lr_fraction))
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.mode.needs_scaler)

    def step(self, xb: torch.Tensor, yb: torch.Tensor, db: torch.Tensor, pb: torch.Tensor, qb: torch.Tensor) -> float:
        s = self.settings
        with self.mode.autocast(self.device):
            logit, digit_logits = self.model(xb)
            loss = distillation_loss(logit, digit_logits, pb, qb, yb, db, s.alpha, s.temperature, s.digit_weight)
        apply_step(self, loss)
        return loss.item()

    def epoch(self, targets: Targets, epoch: int) -> float:
        """One shuffled pass over the transfer pairs, half of each batch swapped (targets with them)."""
        self.model.train()
        generator = torch.Generator().manual_seed(STUDENT_SEED * 1000 + epoch)
        order = torch.randperm(len(targets.x), generator=generator)
        swap = torch.rand(len(targets.x), generator=generator) < SWAP_PROBABILITY
        x, y, d = (torch.from_numpy(a) for a in (targets.x, targets.y, targets.digits))
        p, q = torch.from_numpy(targets.probability), torch.from_numpy(targets.digit_probs)
        total, seen = 0.0, 0
        bar = tqdm(range(0, len(x), self.prof.batch_size), desc=f"student epoch {epoch + 1}", unit="batch",
                   leave=False, dynamic_ncols=True)
        for start in bar:
            idx = order[start:start + self.prof.batch_size]
            mask = swap[idx]
            xb, yb, db = swap_halves(x[idx], y[idx].float(), d[idx], mask)
            pb = torch.where(mask, 1 - p[idx], p[idx])
            qb = torch.where(mask[:, None, None], q[idx].flip(1), q[idx])
            loss = self.step(to_input(xb, self.device), yb.to(self.device), db.to(self.device), pb.to(self.device),
                             qb.to(self.device))
            total, seen = total + loss * len(idx), seen + len(idx)
            bar.set_postfix(loss=f"{total / seen:.4f}")
        return total / seen

    def evaluate(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The averaged weights' pair logits and digit logits (fp32)."""
        return predict_logits(self.averaged.module, x, self.device)


def train_student(model: torch.nn.Module, targets: Targets, val: CourseData, settings: DistillSettings,
                  prof: Profile, device: torch.device) -> tuple[torch.nn.Module, list[dict]]:
    """Train for ``settings.epochs``; returns the averaged model of the best validation epoch, and the history."""
    steps = settings.epochs * math.ceil(len(targets.x) / prof.batch_size)
    trainer = StudentTrainer(model, settings, prof, steps, device)
    history, best, best_state = [], -1.0, None
    for epoch in range(settings.epochs):
        started = time.perf_counter()
        loss = trainer.epoch(targets, epoch)
        logits, _ = trainer.evaluate(val.x)
        acc = float(((logits > 0) == val.y).mean())
        history.append({"epoch": epoch + 1, "train_loss": loss, "val_acc": acc,
                        "lr": trainer.optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - started})
        tqdm.write(f"student epoch {epoch + 1}/{settings.epochs}: loss {loss:.4f}, val acc {acc:.4f} "
                   f"({history[-1]['seconds']:.0f}s)")
        if acc > best:
            best = acc
            best_state = {k: v.detach().clone() for k, v in trainer.averaged.module.state_dict().items()}
    student = build_from_config(student_config(settings), prof.width, prof.feat_dim)  # plain fp32 for export
    student.load_state_dict({k: v.contiguous() for k, v in best_state.items() if k != "n_averaged"})
    return student.eval(), history


# --------------------------------------------------------------------------- the whole run

def save_student(student: torch.nn.Module, layout: ArtifactLayout, history: list[dict], entry: dict) -> None:
    """The best weights and ``history.json`` (what the student is and every epoch): what ``export.student`` reads."""
    layout.weights_dir(NAME).mkdir(parents=True, exist_ok=True)
    with atomic_path(layout.weights(NAME)) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()}, str(tmp))
    atomic_write_text(layout.history(NAME), json.dumps({"student": entry, "history": history}, indent=2) + "\n")


def distill(teacher_dir: Path, data_dir: Path, out: Path, profile: str, settings: DistillSettings,
            threads: int | None = None) -> dict:
    """Steps 1 and 2 (module docstring): the trained student's weights and history in ``out``; returns what the
    student is (the start of its manifest entry, which ``export.student`` completes with parity, int8 and metrics)."""
    started = time.perf_counter()
    layout, prof = ArtifactLayout(out), PROFILES[profile]
    settings = replace(settings, clean_share=prof.clean_share if settings.clean_share is None else settings.clean_share)
    with torch_threads(threads):  # put back after: a caller in this process keeps its own
        teacher = Ensemble.load(teacher_dir, device="cpu", precision="fp32", threads=threads)
        targets = transfer_targets(teacher, data_dir, settings.pairs, settings.clean_share, out / "teacher_targets.npz")
        val_all = load_course_npz(data_dir / "val.npz", require=("x", "y"))
        n_val = min(len(val_all), prof.max_val_pairs or len(val_all))
        val = CourseData(x=val_all.x[:n_val], y=val_all.y[:n_val])
        model, init = build_student(settings, prof, teacher_dir)
        student, history = train_student(model, targets, val, settings, prof, resolve_device("cpu"))
        manifest = teacher.manifest  # as loaded: the ensemble that taught, whatever the folder holds by now
        entry = {"name": NAME, "architecture": settings.architecture, "params": count_parameters(student),
                 "config": student_config(settings).to_dict(), "profile": profile, "init": init,
                 "teacher": {"folder": str(teacher_dir), "fused_sha256": manifest["artifacts"]["fused"]["sha256"],
                             "created": manifest.get("created"), "models": [m["name"] for m in manifest["models"]]},
                 "distillation": {**asdict(settings), "seconds": round(time.perf_counter() - started, 1),
                                  "transfer_seed": TRANSFER_SEED, "data_fingerprint": dataset_fingerprint(data_dir)},
                 "val_acc": max(h["val_acc"] for h in history)}
        save_student(student, layout, history, entry)
        return entry


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.distill", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = DistillSettings()
    parser.add_argument("--teacher", default="models", help="the ensemble's folder (manifest, fused graph, weights)")
    parser.add_argument("--data", default="data", help="data folder: training source digits, val.npz, test files")
    parser.add_argument("--out", default="runs/student", help="where the student's files go")
    parser.add_argument("--profile", choices=list(PROFILES), default="default", help="the student's size and batch")
    parser.add_argument("--architecture", choices=list(REGISTRY), default=defaults.architecture)
    parser.add_argument("--from-scratch", action="store_true", help="random initial weights, not the member's")
    parser.add_argument("--pairs", type=int, help="transfer pairs (default: the profile's pairs per epoch)")
    parser.add_argument("--epochs", type=int, help="passes over them (default: a third of the profile's epochs)")
    parser.add_argument("--alpha", type=float, default=defaults.alpha, help="soft targets' weight (0.7)")
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--digit-weight", type=float, default=defaults.digit_weight)
    parser.add_argument("--lr", type=float, help="peak learning rate (default: 1e-3 from the member's weights)")
    parser.add_argument("--threads", type=int, help="torch and ONNX Runtime threads (default: one per CPU)")
    args = parser.parse_args(argv)
    if not 0 <= args.alpha <= 1 or args.temperature <= 0:
        parser.error("--alpha must be in [0, 1] and --temperature positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prof = PROFILES[args.profile]
    settings = DistillSettings(architecture=args.architecture, init=not args.from_scratch,
                               pairs=args.pairs or prof.pairs_per_epoch, epochs=args.epochs or max(1, prof.epochs // 3),
                               alpha=args.alpha, temperature=args.temperature, digit_weight=args.digit_weight,
                               lr=args.lr)
    entry = distill(Path(args.teacher), Path(args.data), Path(args.out), args.profile, settings, args.threads)
    print(f"student trained: best validation accuracy {entry['val_acc']:.4f}, weights in "
          f"{ArtifactLayout(args.out).weights(NAME)}\nnext, its graphs, int8 decision and measurements: "
          f"python -m export.student {args.out} --data {args.data} [--score FILE] [--install-into {args.teacher}]",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
