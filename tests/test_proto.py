"""Tests for the Caffe protobuf schema (proto/caffe.proto) and its generated bindings."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import re

import pytest
from google.protobuf import text_format

from pyskim.proto import caffe_pb2

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# SSD-only LayerParameter fields used by the UltraFace nets (PermuteParameter is from
# weiliu89/caffe, not BVLC or SkimCaffe), so their text prototxts are expected not to parse.
SSD_ONLY_PROTOTXTS = {
    "models/trained/ultraface_linzaer/RFB-320.prototxt",
    "models/trained/ultraface_linzaer/slim-320.prototxt",
}


def _load_generate_module():
    spec = importlib.util.spec_from_file_location("proto_generate", REPO_ROOT / "proto" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _is_solver(path: pathlib.Path) -> bool:
    return "solver" in path.name or path.parent.name == "upgrade_solver"


def _shared_prototxts(shared_dir: pathlib.Path) -> list[pathlib.Path]:
    roots = [shared_dir / "models", shared_dir / "conformance"]
    return sorted(p for root in roots for p in root.rglob("*.prototxt"))


def _field(message, name):
    return message.DESCRIPTOR.fields_by_name[name]


# --- generated code -------------------------------------------------------------------------


def test_generated_bindings_are_current():
    generate = _load_generate_module()
    assert generate.is_current(), "pyskim/proto/caffe_pb2.py is stale: run `python proto/generate.py`"


# --- schema facts ---------------------------------------------------------------------------


def test_bvlc_solver_numbers_win_over_skimcaffe_clash():
    sp = caffe_pb2.SolverParameter
    assert _field(sp, "layer_wise_reduce").number == 41
    assert _field(sp, "weights").number == 42
    assert _field(sp, "breadth_decay").number == 49
    assert _field(sp, "kernel_shape_decay").number == 50
    skim = {
        "block_group_decay": 43,
        "prune_threshold": 44,
        "measure_threshold": 45,
        "max_threshold_factor": 46,
        "winograd_sparsity_factor": 47,
        "winograd_adjust_threshold": 48,
    }
    for name, number in skim.items():
        assert _field(sp, name).number == number
    defaults = caffe_pb2.SolverParameter()
    assert defaults.prune_threshold == pytest.approx(1e-4)
    assert defaults.measure_threshold == pytest.approx(1e-4)
    assert defaults.max_threshold_factor == 1
    assert defaults.winograd_adjust_threshold == 1
    assert defaults.layer_wise_reduce is True
    assert defaults.rms_decay == pytest.approx(0.99)


def test_skimcaffe_layer_additions():
    assert _field(caffe_pb2.LayerParameter, "connectivity_mode").number == 12
    conv = caffe_pb2.ConvolutionParameter
    assert conv.LOWERED_GEMM == 0 and conv.LOWERED_CCNMM == 1
    assert conv.DIRECT_SCONV == 2 and conv.DIRECT_DCONV == 3 and conv.AUTO == 100
    assert [_field(conv, n).number for n in ("conv_mode", "dump_parameter", "dump_activation")] == [
        21,
        22,
        23,
    ]
    assert _field(conv, "parameter_sparsity_pattern_histogram").number == 24
    ip = caffe_pb2.InnerProductParameter
    assert (ip.GEMM, ip.SPMDM, ip.SPGEMM, ip.AUTO) == (0, 1, 2, 100)
    assert caffe_pb2.InnerProductParameter().spmdm_transpose_in is True
    assert caffe_pb2.InnerProductParameter().spmdm_transpose_out is True
    bn = caffe_pb2.BatchNormParameter()
    assert bn.use_weight_bias is True and bn.bias_term is True
    ps = caffe_pb2.ParamSpec
    assert _field(ps, "block_group_lasso").message_type.name == "BlockGroupLassoSpec"
    assert _field(ps, "regularization_type").number == 8
    assert caffe_pb2.ParamSpec().regularization_type == ""


# --- binary ground truth (wire compatibility) ------------------------------------------------


def test_solverstate_iter_matches_case_steps(shared_dir):
    case = shared_dir / "conformance" / "solvers" / "sgd_fixed"
    steps = json.loads((case / "case.json").read_text())["steps"]
    state = caffe_pb2.SolverState.FromString((case / "final.solverstate").read_bytes())
    assert state.iter == steps
    assert state.learned_net.endswith(".caffemodel")
    # The conformance net has 4 learnable blobs (2 conv/ip layers x weight+bias) or more;
    # every history blob must carry data.
    assert len(state.history) > 0
    assert all(len(h.data) > 0 for h in state.history)


def test_solverstate_current_step_multistep(shared_dir):
    case = shared_dir / "conformance" / "solvers" / "sgd_multistep"
    solver = text_format.Parse((case / "solver.prototxt").read_text(), caffe_pb2.SolverParameter())
    state = caffe_pb2.SolverState.FromString((case / "final.solverstate").read_bytes())
    assert solver.lr_policy == "multistep"
    assert state.current_step == sum(1 for v in solver.stepvalue if v <= state.iter)


@pytest.mark.parametrize("name", ["conv_basic", "ip_basic", "batchnorm_train", "net_lenet"])
def test_layer_weights_have_blobs(shared_dir, name):
    case = shared_dir / "conformance" / "layers" / name
    net = caffe_pb2.NetParameter.FromString((case / "weights.caffemodel").read_bytes())
    blobs = [b for layer in net.layer for b in layer.blobs]
    assert blobs, f"{name}: no blobs in weights.caffemodel"
    for blob in blobs:
        count = 1
        for d in blob.shape.dim:
            count *= d
        assert len(blob.data) == count
    params = json.loads((case / "case.json").read_text()).get("params", {})
    by_name = {layer.name: layer for layer in net.layer}
    for layer_name, shapes in params.items():
        assert [list(b.shape.dim) for b in by_name[layer_name].blobs] == shapes


def test_v1_caffemodel_uses_legacy_layers_field(shared_dir):
    data = (shared_dir / "conformance" / "io" / "upgrade_v1_caffemodel" / "v1.caffemodel").read_bytes()
    net = caffe_pb2.NetParameter.FromString(data)
    assert len(net.layer) == 0 and len(net.layers) > 0
    assert any(len(layer.blobs) > 0 for layer in net.layers)


# --- text format ----------------------------------------------------------------------------


def test_every_shared_prototxt_parses(shared_dir):
    files = _shared_prototxts(shared_dir)
    assert len(files) > 100
    failures = {}
    for path in files:
        rel = path.relative_to(shared_dir).as_posix()
        message = caffe_pb2.SolverParameter() if _is_solver(path) else caffe_pb2.NetParameter()
        try:
            text_format.Parse(path.read_text(), message)
        except text_format.ParseError as exc:
            failures[rel] = str(exc)
    assert set(failures) == SSD_ONLY_PROTOTXTS, failures
    for rel in SSD_ONLY_PROTOTXTS:
        assert "permute_param" in failures[rel]


def test_legacy_v0_and_v1_prototxts(shared_dir):
    io_dir = shared_dir / "conformance" / "io"
    v1 = text_format.Parse((io_dir / "upgrade_v1_net" / "v1.prototxt").read_text(), caffe_pb2.NetParameter())
    assert len(v1.layers) > 0 and len(v1.layer) == 0
    v0 = text_format.Parse((io_dir / "upgrade_v0_net" / "v0.prototxt").read_text(), caffe_pb2.NetParameter())
    assert len(v0.layers) > 0
    assert all(entry.HasField("layer") for entry in v0.layers)


def test_skimcaffe_solver_fields(shared_dir):
    skim = shared_dir / "models" / "skimcaffe"
    uses_winograd_factor = [
        p for p in skim.rglob("*solver*.prototxt") if "winograd_sparsity_factor" in p.read_text()
    ]
    # Files from SkimCaffe's logs still set the removed field 47; it must stay parseable.
    assert uses_winograd_factor
    for path in uses_winograd_factor:
        text_format.Parse(path.read_text(), caffe_pb2.SolverParameter())
    set_breadth = re.compile(r"^\s*breadth_decay\s*:", re.MULTILINE)
    breadth = sorted(p for p in skim.rglob("*solver*.prototxt") if set_breadth.search(p.read_text()))
    assert breadth
    solver = text_format.Parse(breadth[0].read_text(), caffe_pb2.SolverParameter())
    assert solver.HasField("breadth_decay")
    # Round trip through the wire format keeps the relocated field.
    again = caffe_pb2.SolverParameter.FromString(solver.SerializeToString())
    assert again.breadth_decay == solver.breadth_decay


@pytest.mark.parametrize("name", ["RFB-320", "slim-320"])
def test_ssd_caffemodels_parse_in_binary(shared_dir, name):
    # Unlike the text prototxt, the binary model parses: protobuf keeps the SSD-only
    # permute_param as an unknown field, so the weights remain loadable.
    path = shared_dir / "models" / "trained" / "ultraface_linzaer" / f"{name}.caffemodel"
    net = caffe_pb2.NetParameter.FromString(path.read_bytes())
    assert any(layer.type == "Permute" for layer in net.layer)
    assert any(len(layer.blobs) > 0 for layer in net.layer if layer.type == "Convolution")
