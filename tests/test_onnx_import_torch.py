"""ONNX import of models exported by PyTorch (torch is not a pyskim dependency: these tests skip
without it): a small ResNet-style and a MobileNet-style CNN and a net of the other ops exporters
emit, built from torch.nn with random weights in eval mode, exported with torch.onnx (TorchScript
exporter), imported by pyskim and compared with onnxruntime (rtol 1e-4) and with PyTorch itself."""
import io
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from pyskim.convert.onnx_export import net_to_onnx
from pyskim.convert.onnx_import import onnx_to_caffe
from pyskim.proto import caffe_pb2
from pyskim.pycaffe.net import Net

nn = torch.nn


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNetStyle(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        self.layers = nn.Sequential(BasicBlock(8, 8, 1), BasicBlock(8, 16, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        self.residual = stride == 1 and cin == cout
        self.block = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetStyle(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
                                      InvertedResidual(8, 8, 1, 2), InvertedResidual(8, 16, 2, 3),
                                      InvertedResidual(16, 16, 1, 3))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(16, 10))

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(x.view(x.size(0), -1))


class OtherOps(nn.Module):
    """Ceil-mode pooling, padded average pooling, a transposed convolution, concatenation, LeakyReLU,
    PReLU, sigmoid, tanh and a softmax: what other exported CNNs contain."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.avg = nn.AvgPool2d(3, 1, 1)
        self.up = nn.ConvTranspose2d(6, 4, 4, 2, 1)
        self.prelu = nn.PReLU(16)
        self.fc = nn.Linear(16 * 16 * 16, 7)

    def forward(self, x):
        y = self.pool(nn.functional.leaky_relu(self.conv(x), 0.1))
        z = torch.cat([torch.sigmoid(self.avg(y)), torch.tanh(y * 0.5 + 1.0)], 1)
        w = self.prelu(torch.cat([z, nn.functional.max_pool2d(self.up(y), 2)], 1))
        return torch.softmax(self.fc(w.flatten(1)), 1)


def export(model, shape, opset, keep_batchnorm, dynamic_batch=False):
    """``model`` (eval mode) exported to ONNX; ``keep_batchnorm``: BatchNormalization nodes stay (else
    the exporter folds them into the convolutions)."""
    model.eval()
    buffer = io.BytesIO()
    mode = torch.onnx.TrainingMode.PRESERVE if keep_batchnorm else torch.onnx.TrainingMode.EVAL
    dynamic = {"image": {0: "N"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(*shape),), buffer, dynamo=False, opset_version=opset,
                          training=mode, do_constant_folding=not keep_batchnorm, input_names=["image"],
                          output_names=["logits"], dynamic_axes=dynamic)
    return buffer.getvalue()


def randomize_batchnorm(model, seed):
    """Non-trivial running statistics and affine parameters (a fresh BatchNorm is the identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                for tensor in (module.weight, module.bias, module.running_mean):
                    tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    return model


def compare(model, blob, batch, **import_options):
    """Import ``blob`` and compare pyskim with onnxruntime, with PyTorch and (exported back) with
    onnxruntime again; returns the deploy NetParameter."""
    deploy, weights = onnx_to_caffe(blob, **import_options)
    net = Net(deploy, caffe_pb2.TEST)
    net.copy_trained_layers_from_param(weights)
    x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32)).astype(np.float32)
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    expected = session.run(None, {"image": x})[0]
    got = net.forward(image=x)["logits"]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(got, model(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)
    back = ort.InferenceSession(net_to_onnx(net).SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(back.run(None, {"image": x})[0], expected, rtol=1e-4, atol=1e-5)
    return deploy


def types(deploy):
    return [layer.type for layer in deploy.layer]


@pytest.mark.parametrize("opset", [11, 13, 17])
@pytest.mark.parametrize("fold", [False, True])
def test_resnet_style(opset, fold):
    model = randomize_batchnorm(ResNetStyle(), 1)
    deploy = compare(model, export(model, (2, 3, 32, 32), opset, keep_batchnorm=True), 2, fold_batchnorm=fold)
    assert types(deploy).count("Eltwise") == 2 and types(deploy).count("Convolution") == 6
    assert types(deploy).count("BatchNorm") == (0 if fold else 6)


@pytest.mark.parametrize("opset", [11, 13, 17])
def test_mobilenet_style(opset):
    model = randomize_batchnorm(MobileNetStyle(), 2)
    deploy = compare(model, export(model, (2, 3, 32, 32), opset, keep_batchnorm=True), 2)
    assert types(deploy).count("Clip") == 7 and types(deploy).count("BatchNorm") == 10
    assert "Flatten" in types(deploy)


def test_exporter_folded_batchnorm_and_dynamic_batch():
    """The exporter's own BN folding, and a dynamic batch axis: its Shape arithmetic is folded, the
    batch taken from input_shapes."""
    model = randomize_batchnorm(MobileNetStyle(), 3)
    blob = export(model, (2, 3, 32, 32), 13, keep_batchnorm=False, dynamic_batch=True)
    deploy = compare(model, blob, 3, input_shapes=[[3, 3, 32, 32]])
    assert "BatchNorm" not in types(deploy)
    assert list(deploy.layer[0].input_param.shape[0].dim) == [3, 3, 32, 32]


def test_other_exported_ops():
    model = OtherOps()
    deploy = compare(model, export(model, (2, 3, 32, 32), 17, keep_batchnorm=False), 2)
    for layer_type in ("Deconvolution", "Concat", "PReLU", "Sigmoid", "TanH", "Softmax", "Power"):
        assert layer_type in types(deploy), layer_type
