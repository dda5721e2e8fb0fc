"""The registry: the named model configurations, built by name (timm-style).

The ensemble is whatever this registry holds, in its order: training, export and stacking read the
names from here (``model_names()``), the manifest records them, and the run time and the service read
them from the manifest. Adding a model is a ``ModelConfig`` entry here (and, for a new architecture,
its tower module added to ``TOWERS``); then ``python -m training.run_all --models NEW`` trains it and
re-exports and re-stacks the whole ensemble. The names are a stable contract: keep them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from safetensors.torch import load_file
from torch import nn

from ensemble.layout import ArtifactLayout
from ensemble.tables import markdown_table
from training.models.cbam import CBAMTower
from training.models.fpn import FPNTower
from training.models.resnet import ResNetTower
from training.models.siamese import SiameseNet
from training.models.vgg import VGGTower
from training.profiles import get_profile

TOWERS = {"resnet": ResNetTower, "cbam": CBAMTower, "fpn": FPNTower, "vgg": VGGTower}


@dataclass(frozen=True)
class ModelConfig:
    name: str
    tower: str  # key of TOWERS
    head: str = "concat"  # "concat" or "fusion" (training.models.siamese.HEADS)
    tower_kwargs: dict = field(default_factory=dict)
    seed: int = 1
    loss: str = "focal"  # "focal" or "bce"
    label_smoothing: float = 0.0
    width_scale: float = 1.0  # relative to the profile's base width
    description: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


REGISTRY: dict[str, ModelConfig] = {c.name: c for c in [
    ModelConfig("resnet_deep", "resnet", tower_kwargs={"layers": (3, 3, 3)},
                description="ResNet [3,3,3], the original's best single model"),
    ModelConfig("resnet_fusion", "resnet", head="fusion", tower_kwargs={"layers": (2, 2, 2)},
                description="ResNet [2,2,2] with the adaptive multi-head fusion"),
    ModelConfig("resnet", "resnet", tower_kwargs={"layers": (2, 2, 2)}, description="plain ResNet [2,2,2]"),
    ModelConfig("resnet_s2023", "resnet", tower_kwargs={"layers": (2, 2, 2)}, seed=2023,
                description="ResNet, seed 2023"),
    ModelConfig("resnet_s2024", "resnet", tower_kwargs={"layers": (2, 2, 2)}, seed=2024, loss="bce",
                description="ResNet, seed 2024, BCE loss"),
    ModelConfig("resnet_s2025", "resnet", tower_kwargs={"layers": (2, 2, 2)}, seed=2025, width_scale=1.25,
                description="ResNet, seed 2025, 1.25x wider"),
    ModelConfig("fpn", "fpn", description="FPN-style multi-scale tower"),
    ModelConfig("resnet_fusion_s123", "resnet", head="fusion", tower_kwargs={"layers": (2, 2, 2)}, seed=123,
                description="fusion ResNet, seed 123"),
    ModelConfig("cbam_fusion", "cbam", head="fusion", seed=42,
                description="CBAM-attention CNN with multi-way fusion (in place of fusion seed 42)"),
    ModelConfig("vgg", "vgg", seed=456, label_smoothing=0.1,
                description="VGG-style plain conv tower, label smoothing (replaces efficientnet_b0, 7 points behind)"),
]}


def model_names() -> tuple[str, ...]:
    """The registered models, in registry order: the order of the fused graph's outputs."""
    return tuple(REGISTRY)


def register(config: ModelConfig) -> None:
    """Add a model configuration (its name must be new and its tower one of ``TOWERS``): for experiments that
    train a variant beside the ten (``experiments/privileged_ab.py`` trains other seeds this way)."""
    if config.name in REGISTRY:
        raise ValueError(f"a model named {config.name!r} is already registered")
    if config.tower not in TOWERS:
        raise ValueError(f"unknown tower {config.tower!r}; known: {', '.join(TOWERS)}")
    REGISTRY[config.name] = config


def build_model(name: str, width: int, feat_dim: int) -> SiameseNet:
    """Build a registered model; ``width`` and ``feat_dim`` come from the training profile."""
    if name not in REGISTRY:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(REGISTRY)}")
    return build_from_config(REGISTRY[name], width, feat_dim)


def build_from_config(config: ModelConfig, width: int, feat_dim: int) -> SiameseNet:
    """Build a model from its configuration, registered or not (the distilled student is not: it is not one
    of the ensemble's members)."""
    tower = TOWERS[config.tower](width=max(4, round(width * config.width_scale)), feat_dim=feat_dim,
                                 **config.tower_kwargs)
    return SiameseNet(tower, feat_dim, head=config.head)


def load_weights(name: str, out: str | Path, profile: str) -> nn.Module:
    """A trained model from ``OUT/weights/NAME/weights.safetensors``, built at ``profile``'s size, in eval mode."""
    prof = get_profile(profile)
    model = build_model(name, prof.width, prof.feat_dim)
    model.load_state_dict(load_file(ArtifactLayout(out).weights(name)))
    return model.eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def registry_table(width: int, feat_dim: int) -> str:
    """The registry as a markdown table with parameter counts at the given profile size (README shows it)."""
    rows = []
    for c in REGISTRY.values():
        loss = c.loss + (f" + smoothing {c.label_smoothing:g}" if c.label_smoothing else "")
        layers = list(c.tower_kwargs.get("layers", [])) or ""
        params = count_parameters(build_model(c.name, width, feat_dim))
        rows.append([f"`{c.name}`", f"{c.tower} {layers}".strip(), c.head, loss, c.seed, f"{params:,}", c.description])
    return markdown_table(rows, ["name", "tower", "head", "loss", "seed", "parameters", "description"])
