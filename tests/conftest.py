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


def _where(tmp_path_factory):
    """Where each prewarmed job writes: the CLI's cache for its entry, a fresh folder for the others."""
    import os

    def where(key: str):
        if key in ("lite0_stem_cache", "hybrid_vit_cache"):  # entries of the CLI's cache
            return os.environ["UNIONCAM_CACHE"]
        return tmp_path_factory.mktemp(key.replace(":", "-")) / "out"

    return where


@pytest.fixture(scope="session", autouse=True)
def _prewarm(request, _private_cache, tmp_path_factory):
    """The slow exports the selected tests need, queued now in a background worker (tests/prewarm.py)."""
    import prewarm

    where = _where(tmp_path_factory)
    queue = prewarm.Queue(prewarm.plan(request.session.items, where), where)
    yield queue
    queue.close()


@pytest.fixture(scope="session")
def lite0():
    """The real default model (bundled ImageNet weights), loaded once."""
    from unioncam.models import load

    return load("efficientnet_lite0")


@pytest.fixture(scope="session")
def hybrid_vit_cache(_prewarm):
    """The CLI's cached export of examples/hybrid_vit.py (``--model hybrid_vit:build``, tests/prewarm.py)."""
    return _prewarm.result("hybrid_vit_cache")


@pytest.fixture(scope="session")
def lite0_artifacts(_prewarm):
    """efficientnet_lite0 exported at its default layer, once per session (tests/prewarm.py)."""
    return _prewarm.result("lite0_artifacts")


@pytest.fixture(scope="session")
def lite0_stem_cache(_prewarm):
    """The CLI's cached export of the default model at ``--layer stem`` (tests/prewarm.py)."""
    return _prewarm.result("lite0_stem_cache")


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
def lite0_e2e(_prewarm):
    """efficientnet_lite0 as one end-to-end graph, default settings (tests/prewarm.py)."""
    return _prewarm.result("lite0_e2e")


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

