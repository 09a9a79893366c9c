import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """The CLI's export cache goes to a temporary folder, shared by the whole session."""
    import os

    old = os.environ.get("UNIONCAM_CACHE")
    os.environ["UNIONCAM_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("UNIONCAM_CACHE", None)
    else:
        os.environ["UNIONCAM_CACHE"] = old


@pytest.fixture(scope="session")
def lite0():
    """The real default model (bundled ImageNet weights), loaded once."""
    from unioncam.models import load

    return load("efficientnet_lite0")


@pytest.fixture(scope="session")
def lite0_artifacts(lite0, tmp_path_factory):
    """efficientnet_lite0 exported at its default layer, once per session."""
    from unioncam.export import export

    model, layer = lite0
    out = tmp_path_factory.mktemp("art") / "lite0"
    export(model, layer, out, input_size=(224, 224), model_name="efficientnet_lite0")
    return out


@pytest.fixture(scope="session")
def photos():
    """Two real bundled photos as a (2, 3, 224, 224) float32 batch in [0, 1]: cat, espresso."""
    import numpy as np

    from unioncam.image_io import read_rgb, sample_image_path, to_model_input

    return np.stack([to_model_input(read_rgb(sample_image_path(n)), (224, 224)) for n in ("chelsea", "coffee")])


@pytest.fixture(scope="session")
def lite0_eager(lite0, photos):
    """The eager reference's explanation of both photos (computed once: ~25 s per photo)."""
    import torch

    from unioncam import UnionCAM

    model, layer = lite0
    return UnionCAM(model, layer, batch_size=32)(torch.from_numpy(photos))


@pytest.fixture(scope="session")
def tiny_art(tmp_path_factory):
    """(TinyCNN, its artifact folder): exported once per session at 32x32, layer features.3."""
    from tiny import TinyCNN

    from unioncam.export import export

    model = TinyCNN()
    out = tmp_path_factory.mktemp("tiny") / "art"
    export(model, "features.3", out, input_size=(32, 32))
    return model, out


@pytest.fixture(scope="session")
def lite0_e2e(lite0, tmp_path_factory):
    """efficientnet_lite0 as one end-to-end graph, default settings (~25 s to export)."""
    from unioncam.export.end_to_end import export_end_to_end

    model, layer = lite0
    out = tmp_path_factory.mktemp("e2e") / "lite0"
    export_end_to_end(model, layer, out)
    return out / "unioncam.onnx"


@pytest.fixture(scope="session")
def tiny_e2e(tmp_path_factory):
    from tiny import TinyCNN

    from unioncam.export.end_to_end import export_end_to_end

    model = TinyCNN()
    out = tmp_path_factory.mktemp("e2e") / "tiny"
    lines = []
    export_end_to_end(model, "features.3", out, input_size=(32, 32), chunk=4, log=lines.append)
    (out / "export.log").write_text("\n".join(lines))  # what a user of the CLI sees while it exports
    return model, out / "unioncam.onnx"

