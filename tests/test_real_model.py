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
    # The cat's head fills rows 15-224, columns 30-190 of the 224x224 input (marked by hand on the
    # photo); the map must be denser there than outside by a wide margin.
    cam = exp.cam[0]
    inside = np.zeros_like(cam, dtype=bool)
    inside[15:224, 30:190] = True
    assert cam[inside].mean() > 2.0 * cam[~inside].mean()
    # About half of the 1280 head channels are dead (all zero) on real photos: skipped exactly.
    assert 0.3 < exp.stats["constant_channels"] / (2 * 1280) < 0.8
    assert np.isfinite(exp.cam).all()
