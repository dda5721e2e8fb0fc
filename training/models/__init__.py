"""The registry: exactly ten named model configurations, built by name.

The names are a stable contract: export, stacking, the manifest and the service refer to them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from torch import nn

from training.models.cbam import CBAMTower
from training.models.efficientnet import EfficientNetTower
from training.models.fpn import FPNTower
from training.models.resnet import ResNetTower
from training.models.siamese import SiameseNet

TOWERS = {"resnet": ResNetTower, "cbam": CBAMTower, "fpn": FPNTower, "efficientnet": EfficientNetTower}


@dataclass(frozen=True)
class ModelConfig:
    name: str
    tower: str  # key of TOWERS
    head: str = "concat"  # "concat" or "fusion" (training.models.siamese.HEADS)
    tower_kwargs: dict = field(default_factory=dict)
    seed: int = 1
    loss: str = "focal"  # "focal" or "bce"
    label_smoothing: float = 0.0
    lr: float = 1e-3
    weight_decay: float = 5e-4
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
    ModelConfig("efficientnet_b0", "efficientnet", seed=456, label_smoothing=0.1,
                description="EfficientNet-B0-style MBConv+SE tower, label smoothing (in place of fusion seed 456)"),
]}
MODEL_NAMES: tuple[str, ...] = tuple(REGISTRY)


def build_model(name: str, width: int = 32, feat_dim: int = 128) -> SiameseNet:
    """Build a registered model; ``width`` and ``feat_dim`` come from the training profile."""
    if name not in REGISTRY:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")
    config = REGISTRY[name]
    tower = TOWERS[config.tower](width=max(4, round(width * config.width_scale)), feat_dim=feat_dim,
                                 **config.tower_kwargs)
    return SiameseNet(tower, feat_dim, head=config.head)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def registry_table(width: int, feat_dim: int) -> str:
    """The registry as a markdown table with parameter counts at the given profile size (README shows it)."""
    lines = ["| name | tower | head | loss | seed | parameters | description |", "|---|---|---|---|---|---|---|"]
    for c in REGISTRY.values():
        loss = c.loss + (f" + smoothing {c.label_smoothing:g}" if c.label_smoothing else "")
        params = count_parameters(build_model(c.name, width, feat_dim))
        lines.append(f"| `{c.name}` | {c.tower} {list(c.tower_kwargs.get('layers', [])) or ''} | {c.head} | {loss} "
                     f"| {c.seed} | {params:,} | {c.description} |")
    return "\n".join(lines)
