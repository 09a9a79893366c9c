"""A vision transformer's automatic layer is found by structure, not by module names (issue 32):
the last LayerNorm whose output feeds an attention, else the tokens entering the last module that
holds one. Three naming styles written here (torchvision's ``ln_1``/``self_attention`` on
``nn.MultiheadAttention``, Hugging Face's ``layernorm_before``/``attention.attention`` with the
softmax written out, a user's own ``pre``/``mixer``), and a block with no norm at all."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from unioncam.models.target_layer import default_target

D, GRID = 24, 8


class SoftmaxAttention(nn.Module):
    """softmax(QK^T / sqrt(d)) V, one head, written out (Hugging Face's eager attention)."""

    def __init__(self):
        super().__init__()
        self.query, self.key, self.value = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D)

    def forward(self, hidden_states):
        q, k, v = self.query(hidden_states), self.key(hidden_states), self.value(hidden_states)
        return torch.softmax(q @ k.transpose(-2, -1) / D ** 0.5, dim=-1) @ v


class HFAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention, self.output = SoftmaxAttention(), nn.Linear(D, D)

    def forward(self, hidden_states):
        return self.output(self.attention(hidden_states))


class HFLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.layernorm_before, self.attention = nn.LayerNorm(D), HFAttention()
        self.layernorm_after, self.intermediate = nn.LayerNorm(D), nn.Linear(D, D)

    def forward(self, hidden_states):
        hidden_states = hidden_states + self.attention(self.layernorm_before(hidden_states))
        return hidden_states + self.intermediate(self.layernorm_after(hidden_states))


class TVBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = nn.LayerNorm(D)
        self.self_attention = nn.MultiheadAttention(D, 3, batch_first=True)
        self.ln_2, self.mlp = nn.LayerNorm(D), nn.Linear(D, D)

    def forward(self, x):
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + y
        return x + self.mlp(self.ln_2(x))


class OwnBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.pre, self.mixer = nn.LayerNorm(D), SoftmaxAttention()

    def forward(self, x):
        return x + self.mixer(self.pre(x))


class NoNormBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.mixer = SoftmaxAttention()

    def forward(self, x):
        return x + self.mixer(x)


class Tokens(nn.Module):
    def forward(self, x):
        return x


class Net(nn.Module):
    """Patch embedding, a class token, two blocks, the class token's head."""

    def __init__(self, block, container: str):
        super().__init__()
        self.embed = nn.Conv2d(3, D, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, D) * 0.5)
        self.entry = Tokens()
        setattr(self, container, nn.Sequential(block(), block()))
        self.container = container
        self.head = nn.Linear(D, 5)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = self.entry(torch.cat([self.cls.expand(x.shape[0], -1, -1), t], dim=1))
        return self.head(getattr(self, self.container)(t)[:, 0])


@pytest.mark.parametrize("block, container, want", [
    (TVBlock, "layers", "layers.1.ln_1"),
    (HFLayer, "layer", "layer.1.layernorm_before"),
    (OwnBlock, "stack", "stack.1.pre"),
    (NoNormBlock, "stack", "stack.0"),  # no norm: the tokens entering the last block (block 0's output)
])
def test_the_last_block_input_by_structure(block, container, want):
    torch.manual_seed(0)
    name, shape, reshape = default_target(Net(block, container).eval(), (32, 32))
    assert (name, reshape) == (want, "tokens")
    assert shape == (1, 1 + GRID * GRID, D)


def test_a_named_layer_explains_from_the_cli_as_before(tmp_path, monkeypatch, capsys):
    """The found layer is exported and explains: torchvision's naming, through the CLI's factory path."""
    import sys

    from unioncam.cli import main

    (tmp_path / "tvvit.py").write_text(
        "import torch\nfrom test_vit_structure import Net, TVBlock\n"
        "def build():\n    torch.manual_seed(0)\n    return Net(TVBlock, 'layers').eval()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    monkeypatch.chdir(tmp_path)
    code = main(["explain", "--model", "tvvit:build", "--input-size", "32", "--out", str(tmp_path / "out"),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "target layer layers.1.ln_1" in err and "reshape tokens" in err
    sys.modules.pop("tvvit", None)
