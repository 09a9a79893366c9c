"""The real default model (EfficientNet-Lite0, bundled ImageNet weights) on a real bundled photo."""
import numpy as np
import pytest
import torch

from unioncam import UnionCAM
from unioncam.classes import class_name
from unioncam.image_io import read_rgb, sample_image_path, to_model_input

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.mark.slow
def test_cat_photo_predicted_and_cam_on_the_cat(lite0):
    model, layer = lite0
    assert layer == "head"
    x = torch.from_numpy(to_model_input(read_rgb(sample_image_path("chelsea")), (224, 224)))[None]
    exp = UnionCAM(model, layer, batch_size=32)(x)
    c = int(exp.class_idx[0])
    assert c in CAT_CLASSES, class_name(c)
    assert exp.score[0] > 0.5
    # The cat's head fills rows 15-224, columns 30-190 of the 224x224 input (marked by hand on the
    # photo); the map must be denser there than outside by a wide margin.
    cam = exp.cam[0]
    inside = np.zeros_like(cam, dtype=bool)
    inside[15:224, 30:190] = True
    assert cam[inside].mean() > 2.0 * cam[~inside].mean()
    # About half of the 1280 head channels are dead (all zero) on real photos: skipped exactly.
    assert 0.3 < exp.stats["constant_channels"] / 1280 < 0.8
    assert np.isfinite(exp.cam).all()
