"""One training loop for all ten models.

    python -m training.train NAME [--profile default] [--data data/] [--out runs/] [--resume]

AdamW, focal loss (or BCE) with optional label smoothing, an auxiliary digit cross-entropy when
digit labels exist, swap augmentation, ReduceLROnPlateau on validation accuracy, early stopping
that keeps the best weights, mixed precision on CUDA only. Every epoch writes a checkpoint
(atomically) from which ``--resume`` continues exactly as if never stopped.

Layout under ``--out``: ``checkpoints/NAME.pt`` (resumable state, not for git) and
``weights/NAME/{weights.safetensors, history.json, curves.png}``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ensemble.atomic import atomic_path, atomic_write_text
from training.data import dataset_fingerprint, make_pairs
from training.datasets import TrainingData
from training.models import REGISTRY, build_model, count_parameters
from training.profiles import AUX_DIGIT_WEIGHT, PROFILES, TRAIN_SEVERITY, TRAIN_SEVERITY_SPREAD

EVAL_BATCH = 1024


# --------------------------------------------------------------------------- small pieces

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no usable GPU")
    return torch.device(device)


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 1.0, gamma: float = 2.0) -> torch.Tensor:
    """Binary focal loss on logits; targets may be smoothed (values in [0, 1])."""
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p = torch.sigmoid(logits)
    p_true = p * targets + (1 - p) * (1 - targets)
    return (alpha * (1 - p_true) ** gamma * bce).mean()


def pair_loss(config, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    targets = y * (1 - config.label_smoothing) + 0.5 * config.label_smoothing
    if config.loss == "focal":
        return focal_loss(logits, targets)
    return F.binary_cross_entropy_with_logits(logits, targets)


def to_input(x_uint8: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x_uint8.to(device, non_blocking=True).float().div_(255.0)


def swap_halves(x: torch.Tensor, y: torch.Tensor, digits: torch.Tensor | None, mask: torch.Tensor):
    """Swap the two digits of the masked pairs and flip their labels: exact for this task."""
    x = x.clone()
    x[mask] = torch.cat([x[mask, :, 28:], x[mask, :, :28]], dim=2)
    y = torch.where(mask, 1 - y, y)
    if digits is not None:
        digits = torch.where(mask[:, None], digits.flip(1), digits)
    return x, y, digits


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


# --------------------------------------------------------------------------- one epoch

def train_one_epoch(model, optimizer, scaler, config, x: torch.Tensor, y: torch.Tensor, digits: torch.Tensor | None,
                    batch_size: int, generator: torch.Generator, device: torch.device, desc: str,
                    progress: bool = True, position: int = 0) -> dict:
    model.train()
    order = torch.randperm(len(x), generator=generator)
    swap = torch.rand(len(x), generator=generator) < 0.5
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(range(0, len(x), batch_size), desc=desc, unit="batch", leave=False, disable=not progress,
               position=position, dynamic_ncols=True)
    for start in bar:
        idx = order[start:start + batch_size]
        xb, yb, db = swap_halves(x[idx], y[idx].float(), None if digits is None else digits[idx], swap[idx])
        xb, yb = to_input(xb, device), yb.to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            logits, digit_logits = model(xb)
            loss = pair_loss(config, logits.float(), yb)
            if db is not None:
                loss = loss + AUX_DIGIT_WEIGHT * F.cross_entropy(digit_logits.float().reshape(-1, 10),
                                                                 db.to(device).reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total_loss += loss.item() * len(idx)
        correct += ((logits.detach() > 0).float() == yb).sum().item()
        seen += len(idx)
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.4f}")
    return {"loss": total_loss / seen, "acc": correct / seen}


@torch.no_grad()
def predict_logits(model, x: np.ndarray, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Pair logits (N,) and digit logits (N, 2, 10) in eval mode."""
    model.eval()
    logits, digit_logits = [], []
    for start in range(0, len(x), EVAL_BATCH):
        xb = to_input(torch.from_numpy(x[start:start + EVAL_BATCH]), device)
        a, b = model(xb)
        logits.append(a.float().cpu())
        digit_logits.append(b.float().cpu())
    return torch.cat(logits).numpy(), torch.cat(digit_logits).numpy()


def evaluate(model, config, x: np.ndarray, y: np.ndarray, device: torch.device) -> dict:
    logits, _ = predict_logits(model, x, device)
    t = torch.from_numpy(logits)
    loss = pair_loss(config, t, torch.from_numpy(y).float()).item()
    return {"loss": loss, "acc": float(((logits > 0).astype(np.int64) == y).mean())}


# --------------------------------------------------------------------------- curves

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


# --------------------------------------------------------------------------- one model

def run_key(name: str, profile: str, data_dir: Path) -> str:
    """Identifies a training run by its configuration and data. The epoch budget is left out on purpose:
    raising it and passing ``--resume`` extends a finished run from its checkpoint (the run is
    deterministic per epoch, so that equals having trained longer from the start)."""
    settings = {k: v for k, v in PROFILES[profile].items() if k != "epochs"}
    payload = json.dumps({"config": REGISTRY[name].to_dict(), "profile": settings,
                          "data": dataset_fingerprint(data_dir)}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def weights_dir(out: Path, name: str) -> Path:
    return out / "weights" / name


def is_trained(out: Path, name: str, key: str, epochs: int) -> bool:
    """Trained with this key, and either for the full epoch budget or stopped early."""
    history = weights_dir(out, name) / "history.json"
    if not (history.is_file() and (weights_dir(out, name) / "weights.safetensors").is_file()):
        return False
    record = json.loads(history.read_text())
    return record.get("run_key") == key and (record["result"]["epochs"] >= epochs or record["early_stopped"])


def load_weights(name: str, out: Path, profile: str) -> torch.nn.Module:
    """A trained model from ``OUT/weights/NAME/weights.safetensors`` in eval mode."""
    prof = PROFILES[profile]
    model = build_model(name, prof["width"], prof["feat_dim"])
    model.load_state_dict(load_file(weights_dir(out, name) / "weights.safetensors"))
    return model.eval()


def train_model(name: str, data_dir: str | Path = "data", out: str | Path = "runs", profile: str = "default",
                device: str = "auto", threads: int | None = None, resume: bool = False, force: bool = False,
                progress: bool = True, position: int = 0, data: TrainingData | None = None,
                on_epoch_end: Callable[[int], None] | None = None) -> dict:
    """Train one registered model; returns its result row (accuracies, time, parameter count).

    With ``resume`` a checkpoint of the same run continues where it stopped; ``force`` retrains a
    model that is already trained with the same configuration and data.
    """
    config, prof = REGISTRY[name], PROFILES[profile]
    data_dir, out = Path(data_dir), Path(out)
    key = run_key(name, profile, data_dir)
    wdir = weights_dir(out, name)
    if not force and is_trained(out, name, key, prof["epochs"]):
        return {**json.loads((wdir / "history.json").read_text())["result"], "status": "skipped"}
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    data = data or TrainingData.load(data_dir, prof["max_train_pairs"], prof["max_val_pairs"])

    seed_everything(config.seed)
    model = build_model(name, prof["width"], prof["feat_dim"]).to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=3)
    scaler = torch.amp.GradScaler(dev.type, enabled=dev.type == "cuda")
    ckpt_path = out / "checkpoints" / f"{name}.pt"
    state = {"epoch": 0, "best_acc": -1.0, "best_state": None, "bad_epochs": 0, "history": []}
    if resume and not force and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location=dev, weights_only=True)
        if ckpt.get("run_key") == key:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            scaler.load_state_dict(ckpt["scaler"])
            set_rng_state(ckpt["rng"])
            state = {k: ckpt[k] for k in state}

    for epoch in range(state["epoch"], prof["epochs"]):
        if state["bad_epochs"] >= prof["patience"]:
            break
        epoch_start = time.perf_counter()
        x, y, digits = epoch_pairs(data, config.seed, epoch, prof)
        generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
        train = train_one_epoch(model, optimizer, scaler, config, x, y, digits, prof["batch_size"], generator, dev,
                                desc=f"{name} epoch {epoch + 1}/{prof['epochs']}", progress=progress,
                                position=position)
        val = evaluate(model, config, data.val.x, data.val.y, dev)
        row = {"epoch": epoch + 1, "train_loss": train["loss"], "train_acc": train["acc"], "val_loss": val["loss"],
               "val_acc": val["acc"], "lr": optimizer.param_groups[0]["lr"]}
        for split, shifted in data.shifted_val.items():
            row[f"{split}_acc"] = evaluate(model, config, shifted.x, shifted.y, dev)["acc"]
        row["seconds"] = time.perf_counter() - epoch_start
        state["history"].append(row)
        scheduler.step(val["acc"])
        if val["acc"] > state["best_acc"]:
            state["best_acc"], state["bad_epochs"] = val["acc"], 0
            state["best_state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        with atomic_path(ckpt_path) as tmp:
            torch.save({"run_key": key, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(),
                        **state}, tmp)
        if progress:
            shifted_text = " ".join(f"{k[4:-4]}={v:.4f}" for k, v in row.items() if k.startswith("val_sev"))
            tqdm.write(f"{name} epoch {epoch + 1}: train_acc={train['acc']:.4f} val_acc={val['acc']:.4f} "
                       f"{shifted_text} ({row['seconds']:.0f}s)")
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1)

    model.load_state_dict(state["best_state"])
    result = {"name": name, "params": count_parameters(model), "epochs": state["epoch"],
              "val_acc": state["best_acc"], "train_seconds": round(sum(h["seconds"] for h in state["history"]), 1)}
    best = next(h for h in state["history"] if h["val_acc"] == state["best_acc"])
    result.update({k: v for k, v in best.items() if k.startswith("val_sev")})
    if data.test is not None:
        result["test_acc"] = evaluate(model, config, data.test.x, data.test.y, dev)["acc"]
    wdir.mkdir(parents=True, exist_ok=True)
    with atomic_path(wdir / "weights.safetensors") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    save_curves(state["history"], wdir / "curves.png", f"{name} ({profile} profile)")
    atomic_write_text(wdir / "history.json", json.dumps(
        {"name": name, "run_key": key, "profile": profile, "config": config.to_dict(),
         "profile_settings": prof, "device": str(dev), "result": result,
         "early_stopped": state["bad_epochs"] >= prof["patience"], "history": state["history"]},
        indent=2, default=str) + "\n")
    return {**result, "status": "trained"}


def epoch_pairs(data: TrainingData, seed: int, epoch: int, prof: dict):
    """This epoch's training pairs as tensors: fresh ones from the source digits when the folder has
    them (with per-digit severities drawn around the course's), else the training file itself."""
    if data.sources is not None:
        fresh = make_pairs(data.sources["train_images"], data.sources["train_labels"], prof["pairs_per_epoch"],
                           seed=seed, epoch=epoch, severity=TRAIN_SEVERITY, severity_spread=TRAIN_SEVERITY_SPREAD)
        x, y, digits = fresh["x"], fresh["y"], fresh["digits"]
    else:
        x, y, digits = data.train.x, data.train.y, data.train.digits
    return torch.from_numpy(x), torch.from_numpy(y), None if digits is None else torch.from_numpy(digits)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=list(REGISTRY))
    parser.add_argument("--profile", choices=list(PROFILES), default="default")
    parser.add_argument("--data", default="data")
    parser.add_argument("--out", default="runs")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint of this run")
    parser.add_argument("--force", action="store_true", help="retrain even if already trained")
    args = parser.parse_args(argv)
    result = train_model(args.name, args.data, args.out, args.profile, args.device, resume=args.resume,
                         force=args.force)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
