"""Validation lives in one place: every path refuses the same bad input with the same message, every
deliberate error is a UnionCAMError, and constructors take keywords after the target layer."""
import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from tiny import TinyCNN, tiny_images
from unioncam import GradCAM, InvalidInputError, InvalidTypeError, ScoreCAM, UnionCAM, UnionCAMError
from unioncam.runtime import Explainer

ROOT = Path(__file__).resolve().parent.parent

BAD_IMAGES = [
    np.full((1, 3, 32, 32), np.nan, np.float32),
    np.full((1, 3, 32, 32), 1.5, np.float32),
    np.full((1, 3, 32, 32), -0.5, np.float32),
    np.zeros((1, 3, 32, 32), np.uint8),
    np.zeros((3, 32, 32), np.float32),
    np.zeros((0, 3, 32, 32), np.float32),
    np.zeros((1, 4, 32, 32), np.float32),
]


@pytest.mark.parametrize("bad", BAD_IMAGES, ids=["nan", "above1", "below0", "uint8", "rank3", "empty", "4ch"])
def test_eager_and_runtime_refuse_with_the_same_message(tiny_art, bad):
    model, art = tiny_art
    with pytest.raises(InvalidInputError) as eager:
        UnionCAM(model, "features.3")(torch.from_numpy(bad))
    with pytest.raises(InvalidInputError) as runtime:
        Explainer(art)(bad)
    # The runtime adds " for this export" and the exported (H, W) to shape messages only.
    strip = lambda m: m.replace(" for this export", "").replace("(B, 3, 32, 32)", "(B, 3, H, W)")  # noqa: E731
    assert strip(str(eager.value)) == strip(str(runtime.value))


@pytest.mark.parametrize("cls, match", [
    (True, "not a bool"), ([1.5], "integers"), ("cat", "got str"), (285.0, "got float"), ([None], "integers"), (2**63, "out of range"), ([0, 1], "one class per image"),
    (7, "out of range"), (-2, "out of range"), (np.array([9]), "out of range"), (torch.tensor([9]), "out of range"),
])
def test_bad_classes_same_error_on_both_paths(tiny_art, cls, match):
    model, art = tiny_art
    x = tiny_images(1)
    with pytest.raises(InvalidInputError, match=match) as eager:
        UnionCAM(model, "features.3")(x, cls)
    with pytest.raises(InvalidInputError, match=match) as runtime:
        Explainer(art)(x.numpy(), cls)
    assert type(eager.value) is type(runtime.value)


def test_type_errors_are_also_typeerrors():
    with pytest.raises(TypeError):
        UnionCAM("not a model", "features.3")
    with pytest.raises(InvalidTypeError):
        UnionCAM(TinyCNN(), 3)
    with pytest.raises(UnionCAMError):
        UnionCAM(TinyCNN(), "features.3", theta="ten")


def test_constructors_are_keyword_only_after_the_layer():
    model = TinyCNN()
    for cls in (UnionCAM, ScoreCAM, GradCAM):
        with pytest.raises(TypeError, match="positional"):
            cls(model, "features.3", 32)


def test_no_bare_builtin_errors_are_raised_on_purpose():
    """Every `raise` of a builtin exception in the package is a bug: it must be a UnionCAMError."""
    builtin = {"TypeError", "ValueError", "RuntimeError", "KeyError", "IndexError", "Exception", "OSError"}
    offenders = []
    for folder in ("unioncam", "runtime", "export"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Raise) and node.exc is not None:
                    call = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                    if isinstance(call, ast.Name) and call.id in builtin:
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {call.id}")
    assert not offenders, offenders


def test_the_ort_flag_keys_are_the_installed_onnx_runtimes_own():
    """ORT_FLAG_KEYS mirrors ONNX Runtime's session config header: each key must be a string the
    installed library itself holds (a key renamed or dropped upstream fails here, not silently in
    a user's session)."""
    from pathlib import Path

    import onnxruntime

    from unioncam.validation import ORT_FLAG_KEYS

    library = b"".join(p.read_bytes() for p in (Path(onnxruntime.__file__).parent / "capi").glob("*.so*"))
    assert library, "no ONNX Runtime library in the installed package"
    missing = sorted(k for k in ORT_FLAG_KEYS if b"\0" + k.encode() + b"\0" not in library)
    assert not missing, missing
