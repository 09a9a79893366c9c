"""Small CNNs built from the blocks that make each torchvision/timm family what it is, for export tests.

torchvision and timm do not import on the project's machines, so each family's distinctive layers
are written here with plain ``torch.nn`` at toy widths (32x32 inputs, seeded weights). Each entry
gives an early and a late target layer; ``ARCHITECTURES[name]() -> (model, early, late)``.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def _seeded(model: nn.Module, seed: int) -> nn.Module:
    """PyTorch's default initialisation under a seed, then :func:`calibrate` on smooth random images."""
    torch.manual_seed(seed)
    for m in model.modules():
        if hasattr(m, "reset_parameters") and m is not model:
            m.reset_parameters()
    return calibrate(model, zoo_images(64, seed=seed + 100))


def calibrate(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """BatchNorm statistics measured on ``images`` (as training would leave them), and the last
    linear layer rescaled so that logits spread by one unit across them: with arbitrary statistics
    a deep random network gives nearly the same logits for every image, its betas are rounding
    noise, and agreement tests on it would prove nothing."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for batch in images.split(16):
            model(batch)
        model.eval()
        # Logits of a unit spread across images, so that masking an image moves the class score.
        last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        logits = model(images)
        mean = logits.mean(0)
        scale = 1.0 / float((logits - mean).std().clamp_min(1e-9))
        last.weight.mul_(scale)
        last.bias.sub_(mean).mul_(scale)  # logits become (logits - their mean over images) * scale
    return model


def zoo_images(n: int, seed: int = 7) -> torch.Tensor:
    """(n, 3, 32, 32) smooth random images in [0, 1] with their own contrast and brightness per
    image and channel, so that globally pooled features differ between images."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 8, 8, generator=g)
    smooth = nn.functional.interpolate(low, size=(32, 32), mode="bilinear", align_corners=False)
    gain = torch.rand(n, 3, 1, 1, generator=g) * 0.8 + 0.2
    offset = torch.rand(n, 3, 1, 1, generator=g) * (1 - gain)
    return (smooth * gain + offset).clamp(0, 1)


def _bn_act(c, act=nn.ReLU):
    return nn.Sequential(nn.BatchNorm2d(c), act())


class VGG(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3, padding=1),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Conv2d(8, 12, 3, padding=1),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.ReLU(True), nn.Dropout(), nn.Linear(16, 5))

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)))


class Bottleneck(nn.Module):
    """ResNet bottleneck; ``avg_down`` is ResNet-D's shortcut (avg pool then 1x1 conv)."""

    def __init__(self, cin, mid, cout, stride, avg_down=False):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        if avg_down:
            self.downsample = nn.Sequential(nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False),
                                            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        else:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + self.downsample(x))


class ResNet(nn.Module):
    def __init__(self, avg_down=False):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 7, 2, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, 2, 1))
        self.layer1 = Bottleneck(8, 4, 16, 1, avg_down)
        self.layer2 = Bottleneck(16, 8, 24, 2, avg_down)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 5))

    def forward(self, x):
        return self.head(self.layer2(self.layer1(self.stem(x))))


class DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, 8, 1, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU(), nn.Conv2d(8, growth, 3, padding=1, bias=False))

    def forward(self, x):
        return torch.cat([x, self.body(x)], 1)


class DenseNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.block1 = nn.Sequential(DenseLayer(8, 4), DenseLayer(12, 4))
        self.transition = nn.Sequential(nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 1, bias=False), nn.AvgPool2d(2))
        self.block2 = nn.Sequential(DenseLayer(8, 4), DenseLayer(12, 4))
        self.norm = nn.BatchNorm2d(16)
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))

    def forward(self, x):
        return self.head(self.norm(self.block2(self.transition(self.block1(self.stem(x))))))


class InceptionBlock(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.b1 = nn.Sequential(nn.Conv2d(cin, 4, 1), nn.ReLU())
        self.b3 = nn.Sequential(nn.Conv2d(cin, 4, 1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())
        self.b5 = nn.Sequential(nn.Conv2d(cin, 2, 1), nn.ReLU(), nn.Conv2d(2, 4, (1, 5), padding=(0, 2)), nn.ReLU(),
                                nn.Conv2d(4, 4, (5, 1), padding=(2, 0)), nn.ReLU())
        self.pool = nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False), nn.Conv2d(cin, 2, 1), nn.ReLU())

    def forward(self, x):
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.pool(x)], 1)


class Inception(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True))
        self.mixed1 = InceptionBlock(8)
        self.mixed2 = InceptionBlock(16)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(), nn.Linear(16, 5))

    def forward(self, x):
        return self.head(self.mixed2(self.mixed1(self.stem(x))))


class SqueezeExcite(nn.Module):
    def __init__(self, c, squeeze, act=nn.ReLU, gate=nn.Sigmoid):
        super().__init__()
        self.fc1, self.act, self.fc2, self.gate = nn.Conv2d(c, squeeze, 1), act(), nn.Conv2d(squeeze, c, 1), gate()

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))


class InvertedResidual(nn.Module):
    """MobileNetV2 (ReLU6, no SE), MobileNetV3 (hardswish, hard-sigmoid SE) or EfficientNet MBConv (SiLU, SE)."""

    def __init__(self, cin, cout, stride, k, act, se_gate=None):
        super().__init__()
        mid = cin * 4
        layers = [nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), act(),
                  nn.Conv2d(mid, mid, k, stride, k // 2, groups=mid, bias=False), nn.BatchNorm2d(mid), act()]
        if se_gate is not None:
            layers.append(SqueezeExcite(mid, max(2, cin // 2), act=nn.ReLU if se_gate is nn.Hardsigmoid else nn.SiLU,
                                        gate=se_gate))
        layers += [nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.block(x)
        return x + y if self.residual else y


class MobileNet(nn.Module):
    def __init__(self, version):
        super().__init__()
        act = {2: nn.ReLU6, 3: nn.Hardswish, "eff": nn.SiLU}[version]
        gate = {2: None, 3: nn.Hardsigmoid, "eff": nn.Sigmoid}[version]
        k = 5 if version == 3 else 3
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), act()),
            InvertedResidual(8, 8, 1, 3, act, gate), InvertedResidual(8, 12, 2, k, act, gate),
            InvertedResidual(12, 12, 1, k, act, gate),
            nn.Sequential(nn.Conv2d(12, 24, 1, bias=False), nn.BatchNorm2d(24), act()))
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 16), act(), nn.Dropout(),
                                        nn.Linear(16, 5))

    def forward(self, x):
        return self.classifier(self.features(x))


class LayerNorm2d(nn.LayerNorm):
    """ConvNeXt's channels-first LayerNorm: permute, normalise over C, permute back."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dwconv = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.pwconv1, self.act, self.pwconv2 = nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 4, 4), LayerNorm2d(8, eps=1e-6))
        self.stage1 = ConvNeXtBlock(8)
        self.down = nn.Sequential(LayerNorm2d(8, eps=1e-6), nn.Conv2d(8, 16, 2, 2))
        self.stage2 = ConvNeXtBlock(16)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(16), nn.Linear(16, 5))

    def forward(self, x):
        return self.head(self.stage2(self.down(self.stage1(self.stem(x)))))


class RegNetBlock(nn.Module):
    """RegNetY: 1x1, grouped 3x3 (group width 4), SE, 1x1, residual with a strided projection."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), _bn_act(cout),
                               nn.Conv2d(cout, cout, 3, stride, 1, groups=cout // 4, bias=False), _bn_act(cout),
                               SqueezeExcite(cout, max(2, cin // 4)), nn.Conv2d(cout, cout, 1, bias=False),
                               nn.BatchNorm2d(cout))
        self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.f(x) + self.proj(x))


class RegNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), _bn_act(8))
        self.s1 = RegNetBlock(8, 8, 1)
        self.s2 = RegNetBlock(8, 16, 2)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))

    def forward(self, x):
        return self.head(self.s2(self.s1(self.stem(x))))


class Decoder(nn.Module):
    """A segmentation-style head: dilated conv, transposed convolutions up, global max pooling, classifier."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 3, 4, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=2, dilation=2),
                                     nn.ReLU())
        self.decoder = nn.Sequential(nn.ConvTranspose2d(8, 6, 4, stride=2, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                                     nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1, groups=2),
                                     nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(4, 5))  # global max pooling

    def forward(self, x):
        return self.head(self.decoder(self.encoder(x)))


#: name -> (builder, early layer, late layer); the late layer is what Grad-CAM users pick.
ARCHITECTURES = {
    "vgg": (VGG, "features.1", "features.6"),
    "resnet": (lambda: ResNet(False), "stem.2", "layer2"),
    "resnet_d": (lambda: ResNet(True), "stem.2", "layer1"),
    "densenet": (DenseNet, "block1", "norm"),
    "inception": (Inception, "mixed1", "mixed2"),
    "mobilenet_v2": (lambda: MobileNet(2), "features.1", "features.4"),
    "mobilenet_v3": (lambda: MobileNet(3), "features.1", "features.4"),
    "efficientnet": (lambda: MobileNet("eff"), "features.1", "features.4"),
    "convnext": (ConvNeXt, "stem", "stage2"),
    "regnet": (RegNet, "stem", "s2"),
    "decoder": (Decoder, "encoder.1", "decoder.5"),
}


def build(name: str, seed: int = 0):
    """(model in eval mode with seeded weights, early layer, late layer)."""
    builder, early, late = ARCHITECTURES[name]
    return _seeded(builder(), seed), early, late


# --- exports of a family, as the zoo test checks them -------------------------------------------------

SIZE = (32, 32)


def export_gradient_only(model, layer, out):
    """gradient.onnx as export() writes it, but for the batch of 2 the test feeds: the decompositions
    under test are the same, and a static trace exports ~4x faster (the late layer's full export
    keeps the dynamic batch)."""
    from unioncam.export.exporter import _Call
    from unioncam.export.graphs import GradientFunction, trace
    from unioncam.export.onnx_export import export_onnx
    from unioncam.methods.hooks import resolve_layer

    name, module = resolve_layer(model, layer)
    x, c = torch.rand(2, 3, *SIZE), torch.tensor([0, 1])
    out.mkdir(parents=True)
    export_onnx(_Call(trace(GradientFunction(model, name, module), (x, c), dynamic=False)).eval(), (x, c),
                out / "gradient.onnx", input_names=["image", "class_idx"],
                output_names=["logits", "activations", "gradients"], dynamic_shapes=None, opset=18, model=model,
                layer_name=name)


def export_family(model, early: str, late: str, out: str) -> Path:
    """Both exports of one family (run in a worker process): the early layer's gradient graph and the
    late layer's full export."""
    from unioncam.export import export

    out = Path(out)
    export_gradient_only(model, early, out / early)
    export(model, late, out / late, input_size=SIZE)
    return out
