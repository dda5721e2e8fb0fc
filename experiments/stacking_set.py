"""Decided: the stackers fit on a stacking set of fresh held-out pairs, not on the early-stopping pairs
(docs/training.md, "The stacking set").

    python -m experiments.stacking_set [--models models] [--data data] [--course ../shared/course/val.npz]
                                       [--pairs 100000] [--out docs/stacking_set.md]

The committed stackers were fitted on the 10,000 pairs of the built ``val.npz``, the pairs early stopping watched.
The held-out validation digits can make as many fresh pairs as wanted (``training.datasets.stacking_set``, their
own random stream). On the committed ten's fused graph this measures:

1. **The learning curve**: five-fold out-of-fold accuracy and log-loss of both stackers on the first n stacking
   pairs, for growing n (a PNG beside the markdown).
2. **The A/B**: each stacker fitted on ``val.npz`` (today) and on the stacking set, scored on the built test
   (MNIST's test digits) and the course's ``val.npz``, beside the mean of the ten and the best single model.
   Both are scored only: nothing is chosen on them.
3. **LightGBM's settings** on the stacking set, out of fold (the chosen one is what the stacking step uses).
4. **Each member's marginal value**: the stack refitted without it (its per-model features dropped and the
   ensemble-wide ones recomputed over the other nine), out of fold on the stacking set and on the built test.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ensemble.atomic import atomic_path, atomic_write_text
from ensemble.course_data import CourseData, load_course_npz
from ensemble.features import sigmoid, stacking_features
from ensemble.layout import ArtifactLayout
from ensemble.metrics import binary_metrics
from ensemble.runtime import fused_outputs, open_session
from ensemble.tables import markdown_table
from training.datasets import load_labelled_test, stacking_set
from training.models import model_names
from training.stacking import cross_validate, fit_lightgbm, fit_logreg

CURVE_SIZES = (5_000, 10_000, 20_000, 50_000, 100_000, 200_000)
# Overrides of training.stacking.LGB_PARAMS tried on the stacking set, out of fold.
SETTINGS: dict[str, dict] = {
    "4 leaves, 100 a leaf (served)": {},
    "4 leaves, 400 a leaf": {"min_data_in_leaf": 400},
    "8 leaves, 200 a leaf": {"num_leaves": 8, "min_data_in_leaf": 200},
    "15 leaves, 200 a leaf": {"num_leaves": 15, "min_data_in_leaf": 200},
    "15 leaves, 400 a leaf, rate 0.05": {"num_leaves": 15, "min_data_in_leaf": 400, "learning_rate": 0.05},
    "31 leaves, 800 a leaf, rate 0.05": {"num_leaves": 31, "min_data_in_leaf": 800, "learning_rate": 0.05},
}


@dataclass(frozen=True)
class Scored:
    """One labelled set's fused outputs, and its stacking features for any subset of the members."""

    y: np.ndarray
    logits: np.ndarray
    digits: np.ndarray

    @classmethod
    def of(cls, data: CourseData, session) -> Scored:
        return cls(data.y, *fused_outputs(session, data.x, progress=True))

    def features(self, keep: list[int] | None = None) -> tuple[np.ndarray, list[str]]:
        names = model_names()
        keep = list(range(len(names))) if keep is None else keep
        return stacking_features(self.logits[:, keep], self.digits[:, keep], tuple(names[i] for i in keep))

    def head(self, n: int) -> Scored:
        return Scored(self.y[:n], self.logits[:n], self.digits[:n])


def fitted(fit_on: Scored, params: dict | None = None, keep: list[int] | None = None):
    """Both stackers fitted on all of ``fit_on`` (LightGBM's rounds from its five-fold early stopping)."""
    x, names = fit_on.features(keep)
    cv = cross_validate(x, fit_on.y, names, lgb_params=params)
    booster = fit_lightgbm(x, fit_on.y, 0, names, rounds=cv["rounds"], params=params)
    scaler, logreg = fit_logreg(x, fit_on.y)
    return cv, booster, (scaler, logreg)


def accuracy_on(scored: Scored, booster, logreg, keep: list[int] | None = None) -> tuple[float, float]:
    x, _ = scored.features(keep)
    scaler, model = logreg
    return (binary_metrics(scored.y, booster.predict(x))["accuracy"],
            binary_metrics(scored.y, model.predict_proba(scaler.transform(x))[:, 1])["accuracy"])


def learning_curve(stack: Scored, sizes: tuple[int, ...]) -> list[dict]:
    rows = []
    for n in tqdm([s for s in sizes if s <= len(stack.y)], desc="learning curve", unit="size"):
        part = stack.head(n)
        x, names = part.features()
        cv = cross_validate(x, part.y, names)
        rows.append({"pairs": n, **{f"{m} {k}": cv["oof"][m][k] for m in ("lightgbm", "logreg")
                                    for k in ("accuracy", "log_loss")}})
    return rows


def plot_curve(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    pairs = [r["pairs"] for r in rows]
    for method, style in (("lightgbm", "o-"), ("logreg", "s--")):
        ax.plot(pairs, [r[f"{method} accuracy"] for r in rows], style, label=method)
    ax.set(xscale="log", xlabel="stacking pairs (fresh pairs of the held-out validation digits)",
           ylabel="five-fold out-of-fold accuracy", title="The stacker's learning curve")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def ab_rows(val: Scored, stack: Scored, judged: list[Scored], params: dict | None) -> list[list[str]]:
    """Each stacker fitted on val.npz with today's settings and on the stacking set with ``params``, beside the two
    baselines, on each judged set."""
    names = model_names()
    best = int(np.argmax([((val.logits[:, i] > 0) == val.y).mean() for i in range(len(names))]))  # chosen on val
    rows = [["mean of the ten", "-", *[f"{binary_metrics(s.y, sigmoid(s.logits).mean(1))['accuracy']:.4f}"
                                       for s in judged]],
            [f"best single ({names[best]}, chosen on val.npz)", "-",
             *[f"{((s.logits[:, best] > 0) == s.y).mean():.4f}" for s in judged]]]
    for fit_on, label, fit_params in ((val, "built val.npz (10,000; early stopping's), served settings", None),
                                      (stack, f"stacking set ({len(stack.y):,}), chosen settings", params)):
        _, booster, logreg = fitted(fit_on, fit_params)
        scores = [accuracy_on(s, booster, logreg) for s in judged]
        rows.append(["LightGBM", label, *[f"{lgb:.4f}" for lgb, _ in scores]])
        rows.append(["logistic regression", label, *[f"{lr:.4f}" for _, lr in scores]])
    return rows


def settings_rows(stack: Scored) -> tuple[list[list[str]], dict]:
    rows, best = [], (np.inf, {})
    for label, params in tqdm(SETTINGS.items(), desc="LightGBM settings", unit="setting"):
        x, names = stack.features()
        cv = cross_validate(x, stack.y, names, lgb_params=params)
        oof = cv["oof"]["lightgbm"]
        rows.append([label, f"{oof['accuracy']:.4f}", f"{oof['log_loss']:.4f}", str(cv["rounds"])])
        best = min(best, (oof["log_loss"], params), key=lambda b: b[0])
    return rows, best[1]


def member_rows(stack: Scored, test: Scored, params: dict | None) -> list[list[str]]:
    names = model_names()
    cv, booster, logreg = fitted(stack, params)
    full_oof, full_test = cv["oof"]["lightgbm"]["accuracy"], accuracy_on(test, booster, logreg)[0]
    rows = [["(all ten)", f"{full_oof:.4f}", "", f"{full_test:.4f}", ""]]
    for i, name in enumerate(tqdm(names, desc="members", unit="member")):
        keep = [j for j in range(len(names)) if j != i]
        cv, booster, logreg = fitted(stack, params, keep)
        oof, on_test = cv["oof"]["lightgbm"]["accuracy"], accuracy_on(test, booster, logreg, keep)[0]
        rows.append([f"without {name}", f"{oof:.4f}", f"{100 * (full_oof - oof):+.2f}", f"{on_test:.4f}",
                     f"{100 * (full_test - on_test):+.2f}"])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.stacking_set", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path("models"), help="a folder with ensemble.onnx")
    parser.add_argument("--data", type=Path, default=Path("data"), help="the built dataset the models trained on")
    parser.add_argument("--course", type=Path, default=Path("../shared/course/val.npz"),
                        help="the course's labelled val.npz (scored only)")
    parser.add_argument("--pairs", type=int, default=max(CURVE_SIZES), help="stacking pairs drawn")
    parser.add_argument("--out", type=Path, default=Path("docs/stacking_set.md"))
    args = parser.parse_args(argv)

    session = open_session(ArtifactLayout(args.models).fused, "cpu")
    stack = Scored.of(stacking_set(args.data, args.pairs, workers=os.cpu_count() or 1, progress=True), session)
    val = Scored.of(load_course_npz(args.data / "val.npz", require=("x", "y")), session)
    test = Scored.of(load_labelled_test(args.data), session)
    course = Scored.of(load_course_npz(args.course, require=("x", "y")), session)

    curve = learning_curve(stack, CURVE_SIZES)
    plot_curve(curve, args.out.with_suffix(".png"))
    settings, chosen = settings_rows(stack)
    sections = [
        f"Models: `{args.models}` (fused graph), data: `{args.data}`, {len(stack.y):,} stacking pairs.", "",
        "## The stacker's learning curve (five-fold out of fold on the first n stacking pairs)", "",
        markdown_table([[f"{r['pairs']:,}", *[f"{v:.4f}" for k, v in r.items() if k != "pairs"]] for r in curve],
                       ["pairs", "LightGBM accuracy", "LightGBM log-loss", "logreg accuracy", "logreg log-loss"]),
        "", f"![learning curve]({args.out.with_suffix('.png').name})", "",
        "## LightGBM's settings on the stacking set (out of fold)", "",
        markdown_table(settings, ["setting", "accuracy", "log-loss", "rounds"]), "",
        "## The A/B: where the stackers are fitted (scored on the built test and the course's val.npz)", "",
        markdown_table(ab_rows(val, stack, [test, course], chosen),
                       ["method", "fitted on", "built test", "course val.npz"]), "",
        "## Each member's marginal value (LightGBM refitted without it on the stacking set)", "",
        markdown_table(member_rows(stack, test, chosen),
                       ["stack", "out of fold", "cost (points)", "built test", "cost (points)"]), ""]
    text = "\n".join(sections)
    print(text)
    atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
