"""The real default model (EfficientNet-Lite0, bundled ImageNet weights) on a real bundled photo."""
import numpy as np
import pytest

from unioncam.classes import class_name

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.mark.slow
def test_cat_photo_predicted_and_cam_on_the_cat(lite0, lite0_eager):
    # lite0_eager: UnionCAM(model, "head", batch_size=32) on [chelsea.png, coffee.png], resized to 224.
    assert lite0[1] == "head"
    exp = lite0_eager
    c = int(exp.class_idx[0])
    assert c in CAT_CLASSES, class_name(c)
    assert exp.score[0] > 0.5
    assert class_name(int(exp.class_idx[1])) == "espresso"
    # About half of the 1280 head channels are dead (all zero) on real photos: skipped exactly.
    assert 0.3 < exp.stats["constant_channels"] / (2 * 1280) < 0.8
    assert np.isfinite(exp.cam).all()


@pytest.mark.slow
@pytest.mark.parametrize("cat_left", [True, False])
def test_two_objects_each_class_map_lies_on_its_object(lite0_artifacts, cat_left):
    """A composite, the cat beside the espresso: the Egyptian cat map (285) must put most of its mass
    on the cat's half and the espresso map (967) on the cup's half, whichever side each is on. A map
    that ignores the class, or a centred blob, puts half on each side and fails."""
    import cv2

    from unioncam.image_io import read_rgb, sample_image_path
    from unioncam.runtime import Explainer

    halves = [cv2.resize(read_rgb(sample_image_path(n)), (112, 224)) for n in ("chelsea", "coffee")]
    comp = np.hstack(halves if cat_left else halves[::-1])
    x = (comp.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
    ex = Explainer(lite0_artifacts)
    cat_side = slice(0, 112) if cat_left else slice(112, 224)
    cup_side = slice(112, 224) if cat_left else slice(0, 112)
    share = lambda m, side: float(m[:, side].sum() / m.sum())  # noqa: E731
    cat, cup = ex(x, 285), ex(x, 967)
    assert share(cat.cam[0], cat_side) > 0.8 and share(cat.region[0], cat_side) > 0.8
    assert share(cup.region[0], cup_side) > 0.7 and share(cup.cam[0], cup_side) > 0.55


@pytest.mark.slow
def test_int8_fidelity_on_the_real_weights(lite0_artifacts, photos, tmp_path):
    """INT8 masked passes on the real EfficientNet-Lite0, against the exact FP32 map of the same
    photo: the tolerance is the budget table's measured worst case over 24 photos
    (benchmarks/results/2026-11-25-cpu2-budgets.md: final-map Pearson r worst 0.869, |dbeta| median
    0.026), with a margin. The class comes from the FP32 gradient graph and never changes."""
    import shutil

    from unioncam.export import add_precision
    from unioncam.runtime import Explainer

    d = tmp_path / "lite0"
    shutil.copytree(lite0_artifacts, d)
    add_precision(d, "int8")  # calibrated on the bundled photos, as the CLI does
    images = photos.numpy() if hasattr(photos, "numpy") else photos
    exact, int8 = Explainer(d)(images), Explainer(d, precision="int8")(images)
    assert int8.class_idx.tolist() == exact.class_idx.tolist()
    for i in range(images.shape[0]):
        r = np.corrcoef(int8.cam[i].ravel(), exact.cam[i].ravel())[0, 1]
        assert r >= 0.85, (i, r)
    assert np.abs(int8.beta_region - exact.beta_region).max() <= 0.1
