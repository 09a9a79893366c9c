"""The automatic layer over its class (issue 38): generated transformer classifiers, each layout
knowing by construction which module outputs its last block's input (tests/vit_gen.py), against
what :func:`unioncam.models.target_layer.default_target` finds by following tensors.

The rule (docs/models.md): the last (1, N, D) tensor that reaches the last attention's q, k and v
through per-token ops, through a projection, that a module outputs; reshaped with the leading
tokens and the patch grid. Swin-style windows: the last block's (1, h, w, D) output, ``bhwc``."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from generated import examples
from vit_gen import ATTENTION, D, NORMS, Layout, WindowLayout, build, build_windows, hand_written_vit
from unioncam.models.target_layer import default_target
from unioncam.reshape import parse_reshape

pytestmark = pytest.mark.generated

GRIDS = st.tuples(st.integers(1, 6), st.integers(1, 6)).filter(lambda g: g[0] * g[1] > 1)

layouts = st.builds(Layout, attention=st.sampled_from(ATTENTION), fused_qkv=st.booleans(),
                    norm=st.sampled_from(NORMS), pre_norm=st.booleans(), extra_tokens=st.sampled_from((0, 1, 2, 5)),
                    grid=GRIDS, depth=st.integers(1, 4))


@st.composite
def window_layouts(draw):
    window = draw(st.sampled_from((1, 2, 3, 4)))
    grid = (window * draw(st.integers(1, 3)), window * draw(st.integers(1, 3)))
    if grid == (1, 1):  # a map must be larger than one cell to explain anything
        grid = (1, 2)
    return WindowLayout(grid=grid, window=window, depth=draw(st.integers(1, 3)))


@examples(80)
@given(layouts)
def test_the_automatic_layer_is_the_last_block_input(layout):
    name, shape, reshape = default_target(build(layout), layout.input_size)
    assert name == layout.expected_layer()
    assert shape == (1, layout.tokens, D)
    assert parse_reshape(reshape).prefix_and_grid(layout.tokens) == (layout.extra_tokens, layout.grid)


@examples(20)
@given(window_layouts())
def test_windowed_attention_takes_the_last_block_channels_last(layout):
    assert default_target(build_windows(layout), layout.input_size) == ("blocks", (1, *layout.grid, D), "bhwc")


def eager_and_runtime(model, input_size, folder):
    """The automatic layer exported, and the eager and runtime maps of two seeded images."""
    from unioncam import UnionCAM
    from unioncam.export import export
    from unioncam.runtime import Explainer

    name, _, reshape = default_target(model, input_size)
    export(model, name, folder, input_size=input_size, reshape=reshape)
    x = torch.rand(2, 3, *input_size, generator=torch.Generator().manual_seed(1))
    return UnionCAM(model, name, reshape=reshape)(x), Explainer(folder)(x.numpy())


@examples(2)
@given(layout=layouts.filter(lambda lay: lay.depth <= 2 and min(lay.grid) >= 2))
def test_generated_transformers_explain_alike_in_eager_and_runtime(layout, tmp_path_factory):
    eager, rt = eager_and_runtime(build(layout), layout.input_size, tmp_path_factory.mktemp("gen") / "art")
    assert np.abs(np.asarray(eager.cam) - rt.cam).max() <= 1e-4
    assert (rt.cam.std(axis=(1, 2)) > 1e-3).all()  # a map, not a constant


def test_the_hand_written_vit_explains_from_the_cli_with_no_layer(tmp_path, monkeypatch, capsys):
    """The issue's ViT (pre-norm, scaled_dot_product_attention inline in the block's forward, a
    class token): the CLI finds the layer, and its written map equals the eager reference's."""
    from unioncam import UnionCAM
    from unioncam.cli import main
    from unioncam.image_io import read_rgb, to_model_input

    (tmp_path / "handvit.py").write_text("from vit_gen import hand_written_vit as build\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    photo = __import__("unioncam.data", fromlist=["x"]).__path__[0] + "/chelsea.png"
    code = main(["explain", photo, "--model", "handvit:build", "--input-size", "32", "--out", str(tmp_path / "out"),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "target layer blocks.1.norm1" in err and "reshape tokens" in err
    x = torch.from_numpy(to_model_input(read_rgb(photo), (32, 32))[None])
    eager = UnionCAM(hand_written_vit(), "blocks.1.norm1", reshape="tokens")(x)
    np.testing.assert_allclose(np.load(tmp_path / "out" / "chelsea_cam.npy"), np.asarray(eager.cam)[0], atol=1e-4)
