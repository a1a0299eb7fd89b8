"""Fuzzing pyskim's readers with mutated real inputs from ``../shared``.

Prototxts (nets and solvers), caffemodels (current, V1 and HDF5), solverstates, binaryprotos and LMDB
Datums are mutated (bit flips, byte insertions/deletions, truncation, huge dimensions, negative sizes,
deep nesting, wrong field types, non-UTF-8 names, swapped file kinds; see ``fuzz_harness``) and run
through pyskim: parse, build a Net in TEST phase (Data layers reading a new LMDB of mutated records),
forward small nets, load weights, restore solver states, read mean files. pyskim may only raise its own documented errors
(:class:`pyskim.errors.PyskimError` subclasses): a segfault, a hang, a MemoryError or any other
exception (numpy, protobuf, lmdb, KeyError, IndexError, TypeError ...) fails the test.

Every example runs in a sandboxed worker process (``fuzz_harness.Worker``) with a per-example time
limit, ``RLIMIT_DATA`` and a 64 MiB blob limit (``pyskim.set_max_blob_bytes``), so crashes, hangs and
absurd allocations are reported, not suffered.

The default run is short and deterministic (``derandomize``). ``pytest -m slow tests/test_fuzz.py``
runs 450 mutated V1 caffemodels (``PYSKIM_FUZZ_V1_EXAMPLES``) and the long run
(``PYSKIM_FUZZ_EXAMPLES``, default 10000): it spreads that many examples over the input kinds, keeps
going after a finding, and writes a JSON report to ``PYSKIM_FUZZ_REPORT``
(default ``fuzz_report.json`` in the pytest temp folder; mutated inputs that failed are saved next to it).
"""
import json
import os
import re
import time
from collections import Counter
from pathlib import Path

import fuzz_harness as fh
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

# -- mutation strategies -----------------------------------------------------------------------------

POS = st.integers(0, 2**24)
DIMS = st.lists(st.sampled_from([0, 1, 2, 3, 5, -1, -7, 100000000, 10**9, 2**31, 2**40]), max_size=5)

BYTE_OP = st.one_of(
    st.tuples(st.just("flip"), POS, st.integers(0, 7)),
    st.tuples(st.just("set"), POS, st.sampled_from([0, 0xFF, 0x7F, 0x80, 0x08, 0x0A, 0x22, 0x7B, 0x7D, 0x3A])),
    st.tuples(st.just("insert"), POS, st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), POS, st.integers(1, 64)),
    st.tuples(st.just("truncate"), POS),
    st.tuples(st.just("dup"), POS, st.integers(1, 64), st.sampled_from([1, 10, 1000])),
)

NUMBERS = ["0", "-1", "-2147483648", "2147483647", "4294967295", "4294967296", "100000000", "1000000000",
           "9223372036854775807", "18446744073709551616", "1e30", "-1e30", "nan", "inf", "-inf", "3.5",
           "1e-45", "0x10", '"abc"', "true", "-0", "2", "7", "65536"]
STRINGS = ["", "x", "data", "label", "conv1", "ip1", "loss", "db", "mean.binaryproto", "../nonexistent",
           "A" * 1000, "Convolution", "Deconvolution", "Pooling", "InnerProduct", "Data", "Input", "DummyData",
           "Python", "Reshape", "Split", "Slice", "Concat", "Eltwise", "Crop", "Tile", "Embed", "BatchNorm",
           "Scale", "Bias", "SPP", "LRN", "Im2col", "Flatten", "Softmax", "SoftmaxWithLoss", "Accuracy",
           "ArgMax", "Reduction", "Filter", "BatchReindex", "Parameter", "HDF5Data", "ImageData", "MemoryData",
           "Dropout", "PReLU", "MVN", "Power", "Exp", "Log", "ELU", "Threshold", "InfogainLoss",
           "ContrastiveLoss", "HingeLoss", "EuclideanLoss", "SigmoidCrossEntropyLoss", "Sigmoid", "TanH",
           "ReLU", "AbsVal", "BNLL", "Clip", "Swish", "xavier", "gaussian", "msra", "bilinear", "uniform",
           "positive_unitball", "constant", "SGD", "Adam", "AdaDelta", "AdaGrad", "RMSProp", "Nesterov",
           "multistep", "step", "poly", "inv", "sigmoid", "exp", "fixed", "L1", "L2", "Bogus"]
ENUMS = ["MAX", "AVE", "STOCHASTIC", "TRAIN", "TEST", "LMDB", "LEVELDB", "CAFFE", "SUM", "PROD", "ASUM",
         "SUMSQ", "MEAN", "ACROSS_CHANNELS", "WITHIN_CHANNEL", "FOO", "HDF5", "BINARYPROTO", "CPU", "GPU",
         "STRICT", "PERMISSIVE", "L1", "L2", "CONVOLUTION", "RELU", "DATA", "7"]
FIELDS = [
    "dim: 100000000", "dim: -1", "dim: 0", "dim: 1000000000", "num_output: 1000000000", "num_output: 0",
    "kernel_size: 0", "kernel_size: 100000", "kernel_size: 1", "stride: 0", "pad: 100000", "dilation: 0",
    "group: 0", "group: 7", "axis: 100", "axis: -100", 'top: "data"', 'bottom: "data"', 'bottom: "nope"',
    'top: "extra"', "batch_size: 100000000", "batch_size: 0", "crop_size: 100000", "prefetch: 0",
    "shape { dim: 100000000 dim: 100000000 }", "shape { dim: -5 }", "shape { dim: 100000000 dim: 0 }",
    "input_dim: 100000000", 'input: "x"', "input_dim: 1",
    'layer { name: "z" type: "ReLU" bottom: "data" top: "data" }',
    'layers { name: "v1" type: RELU bottom: "data" top: "data" }',
    'layer { name: "t" type: "Tile" bottom: "data" top: "t" tile_param { tiles: 100000000 } }',
    'layer { name: "r" type: "Reshape" bottom: "data" top: "r" reshape_param { shape { dim: 100000000 } } }',
    'layer { name: "d" type: "DummyData" top: "d" dummy_data_param { shape { dim: 100000000 dim: 1000 } } }',
    'layer { name: "i" type: "InnerProduct" bottom: "data" top: "i" inner_product_param { num_output: 1000000000 } }',
    ('layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 1 '
     'kernel_size: 1 pad: 60000 } }'),
    "local_size: 100000", "local_size: 2", "pooled_h: 0", "num_axes: -5", "tiles: 100000000",
    "loss_weight: nan", "propagate_down: true", "force_backward: true", "include { phase: TRAIN }",
    'exclude { stage: "x" }', "slice_point: 100000", "offset: 100000", "top_k: 100000", "ignore_label: 5",
    "negative_slope: nan", "channel_shared: true", "engine: CAFFE", "bias_term: false", "transpose: true",
    "test_iter: 100000000", "iter_size: 0", "average_loss: 0", "momentum: nan", "base_lr: inf",
    'lr_policy: "bogus"', "stepvalue: -1", "clip_gradients: -1", 'regularization_type: "L3"',
    'type: "Bogus"', "snapshot: 1", "max_iter: 0", "test_interval: 1", "iter_size: 100000000",
]

TEXT_OP = st.one_of(
    st.tuples(st.just("number"), POS, st.sampled_from(NUMBERS)),
    st.tuples(st.just("string"), POS, st.sampled_from(STRINGS)),
    st.tuples(st.just("enum"), POS, st.sampled_from(ENUMS)),
    st.tuples(st.just("field"), POS, st.sampled_from(FIELDS)),
    st.tuples(st.just("dupline"), POS, st.sampled_from([1, 2, 10, 1000])),
    st.tuples(st.just("delline"), POS),
    st.tuples(st.just("nest"), POS, st.sampled_from([2, 100, 10000]),
              st.sampled_from(["{", "layer {", "shape { ", "[", "convolution_param { "])),
    st.tuples(st.just("wrongtype"), POS,
              st.sampled_from(["message", "quoted", "list", "nested", "bare", "empty"])),
    st.tuples(st.just("dims"), POS, DIMS),
    BYTE_OP,
)
PROTO_OP = st.one_of(
    st.tuples(st.just("pfield"), POS, st.sampled_from(["set", "set", "clear", "truncate", "extend", "elem"]),
              st.integers(0, 255)),
    st.tuples(st.just("pdims"), POS, DIMS),
)
PROTO_OP = st.one_of(*[PROTO_OP] * 9, st.tuples(st.just("pnest"), st.sampled_from([10, 100, 10000])))
IMAGE_SIZE = st.sampled_from([0, 1, 3, 1000, 20000, 65535, 100000, 2**31 - 1, 2**32 - 1])
#: Datum edits add ("pimg", width, height): an encoded image declaring another size (PNG CRC kept valid).
DATUM_OP = st.one_of(PROTO_OP, PROTO_OP, st.tuples(st.just("pimg"), IMAGE_SIZE, IMAGE_SIZE))
SEMANTIC_TEXT_OP = st.one_of(
    st.tuples(st.just("number"), POS, st.sampled_from(NUMBERS)),
    st.tuples(st.just("dims"), POS, DIMS),
    st.tuples(st.just("string"), POS, st.sampled_from(STRINGS)),
)
PFIELD_OP = st.tuples(st.just("pfield"), POS, st.sampled_from(["set", "set", "set", "clear", "truncate",
                                                               "extend", "elem"]), st.integers(0, 255))
TEXT_PROGRAM = st.lists(TEXT_OP, min_size=1, max_size=4)
BYTE_PROGRAM = st.lists(BYTE_OP, max_size=3)
#: (proto program, text program) for prototxts: raw text edits, or field edits on the parsed message
#: (kept parseable) plus at most one semantic text edit.
PPARAM_OP = st.tuples(st.just("pparam"), POS, st.integers(0, 7), st.integers(0, 2**16))
TEXT_PROGRAMS = st.one_of(
    st.tuples(st.just([]), TEXT_PROGRAM),
    st.tuples(st.lists(st.one_of(PFIELD_OP, PFIELD_OP, st.tuples(st.just("pdims"), POS, DIMS)),
                       min_size=1, max_size=3),
              st.lists(SEMANTIC_TEXT_OP, max_size=1)),
    st.tuples(st.lists(PPARAM_OP, min_size=1, max_size=3), st.just([])),
    st.tuples(st.lists(PPARAM_OP, min_size=1, max_size=3), st.just([])),
)
#: (proto program, byte program) for binary files: field edits only, byte edits only, or both.
BINARY_PROGRAMS = st.one_of(
    st.tuples(st.lists(PROTO_OP, min_size=1, max_size=3), st.just([])),
    st.tuples(st.lists(PROTO_OP, min_size=1, max_size=3), st.just([])),
    st.tuples(st.lists(PROTO_OP, min_size=1, max_size=3), st.just([])),
    st.tuples(st.just([]), st.lists(BYTE_OP, min_size=1, max_size=3)),
    st.tuples(st.lists(PROTO_OP, min_size=1, max_size=2), st.lists(BYTE_OP, min_size=1, max_size=2)),
)


# -- cases -------------------------------------------------------------------------------------------

class Case:
    """A drawn example: what to build (lazily) and a readable description for reproduction."""

    def __init__(self, kind, build, **described):
        self.kind = kind
        self._build = build
        self.described = described

    def payload(self):
        return self._build()

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.described.items())
        return f"Case({self.kind}: {args})"


def _text(path):
    return fh.read_seed(path).decode("utf-8", "replace")


def _rel(path):
    return str(Path(path).relative_to(fh.SHARED))


FIXTURE_LMDB = fh.CONF / "solvers/sgd_fixed/data_lmdb"
CIFAR_MEAN = fh.SHARED / "datasets/cifar10/mean_rgb_train.binaryproto"


def _with_fixture_paths(text):
    """Data sources -> "db" (an LMDB linked next to the net), mean files -> "mean.binaryproto"."""
    text = fh.data_net_prototxt(text, "db")
    return re.sub(r'mean_file\s*:\s*"[^"]*"', 'mean_file: "mean.binaryproto"', text)


FIXTURE_LINKS = {"db": str(FIXTURE_LMDB), "mean.binaryproto": str(CIFAR_MEAN)}


@st.composite
def net_cases(draw):
    import pyskim
    seed = draw(st.sampled_from(fh.CORPUS.nets))
    proto_program, program = draw(TEXT_PROGRAMS)
    phase = draw(st.sampled_from([pyskim.TEST] * 4 + [pyskim.TRAIN]))
    backward = draw(st.booleans())

    def build():
        from pyskim.proto import caffe_pb2
        text = fh.mutate_text_proto(_with_fixture_paths(_text(seed)), caffe_pb2.NetParameter, proto_program,
                                    program)
        return {"scenario": "net", "files": {"net.prototxt": text.encode("utf-8", "surrogateescape")},
                "links": FIXTURE_LINKS, "params": {"net": "net.prototxt", "phase": phase, "backward": backward}}
    return Case("net", build, seed=_rel(seed), proto_program=proto_program, program=program, phase=phase,
                backward=backward)


def _solver_links(seed):
    case_dir = seed.parent if (seed.parent / "net.prototxt").is_file() and "solvers" in seed.parts else None
    links = {"data_lmdb": str(FIXTURE_LMDB), "db": str(FIXTURE_LMDB)}
    if case_dir is not None:
        links["net.prototxt"] = str(case_dir / "net.prototxt")
        for model in case_dir.glob("*.caffemodel"):
            links[model.name] = str(model)
    else:
        links["net.prototxt"] = str(fh.CONF / "solvers/test_interval/net.prototxt")
    return links


def _solver_text(seed):
    text = _text(seed)
    if "solvers" not in seed.parts or seed.parent.name == "upgrade_solver":
        text = re.sub(r'(\b(?:net|train_net|test_net)\s*:\s*)"[^"]*"', r'\1"net.prototxt"', text)
        text = re.sub(r'snapshot_prefix\s*:\s*"[^"]*"', 'snapshot_prefix: "snap"', text)
    return text


@st.composite
def solver_cases(draw):
    seed = draw(st.sampled_from(fh.CORPUS.solvers))
    proto_program, program = draw(TEXT_PROGRAMS)

    def build():
        from pyskim.proto import caffe_pb2
        text = fh.mutate_text_proto(_solver_text(seed), caffe_pb2.SolverParameter, proto_program, program)
        return {"scenario": "solver", "files": {"solver.prototxt": text.encode("utf-8", "surrogateescape")},
                "links": _solver_links(seed), "params": {"solver": "solver.prototxt"}}
    return Case("solver", build, seed=_rel(seed), proto_program=proto_program, program=program)


@st.composite
def weights_cases(draw):
    net, model = draw(st.sampled_from(fh.CORPUS.weights))
    proto_program, byte_program = draw(BINARY_PROGRAMS)

    def build():
        from pyskim.proto import caffe_pb2
        data = fh.mutate_message_bytes(fh.read_seed(model), caffe_pb2.NetParameter, proto_program, byte_program)
        return {"scenario": "weights", "links": FIXTURE_LINKS,
                "files": {"net.prototxt": _with_fixture_paths(_text(net)).encode(), "weights.caffemodel": data},
                "params": {"net": "net.prototxt", "weights": "weights.caffemodel"}}
    return Case("weights", build, seed=_rel(model), proto_program=proto_program, byte_program=byte_program)


@st.composite
def state_cases(draw):
    state = draw(st.sampled_from(fh.CORPUS.states))
    proto_program, byte_program = draw(BINARY_PROGRAMS)

    def build():
        from pyskim.proto import caffe_pb2
        data = fh.mutate_message_bytes(fh.read_seed(state), caffe_pb2.SolverState, proto_program, byte_program)
        links = _solver_links(state)
        links["solver.prototxt"] = str(state.parent / "solver.prototxt")
        return {"scenario": "solver", "files": {"state.solverstate": data}, "links": links,
                "params": {"solver": "solver.prototxt", "state": "state.solverstate"}}
    return Case("solverstate", build, seed=_rel(state), proto_program=proto_program, byte_program=byte_program)


def _lmdb_for_mean(mean):
    name = Path(mean).stem.replace("mean_", "")
    path = fh.CONF / "io/convert_imageset" / name
    return path if path.is_dir() else fh.CONF / "io/convert_imageset/lmdb_plain"


def _data_net(batch_size=2, transform="", prefetch=4):
    return f"""name: "fuzz_data"
layer {{ name: "data" type: "Data" top: "data" top: "label"
  transform_param {{ {transform} }}
  data_param {{ source: "db" batch_size: {batch_size} backend: LMDB prefetch: {prefetch} }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param {{ num_output: 2 kernel_size: 1 weight_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "pool" type: "Pooling" bottom: "conv" top: "pool"
  pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
"""


@st.composite
def binaryproto_cases(draw):
    seed = draw(st.sampled_from(fh.CORPUS.binaryprotos))
    proto_program, byte_program = draw(BINARY_PROGRAMS)

    def build():
        from pyskim.proto import caffe_pb2
        data = fh.mutate_message_bytes(fh.read_seed(seed), caffe_pb2.BlobProto, proto_program, byte_program)
        net = _data_net(transform='mean_file: "mean.binaryproto" scale: 0.00390625')
        return {"scenario": "binaryproto", "files": {"mean.binaryproto": data, "net.prototxt": net.encode()},
                "links": {"db": str(_lmdb_for_mean(seed))},
                "params": {"file": "mean.binaryproto", "net": "net.prototxt"}}
    return Case("binaryproto", build, seed=_rel(seed), proto_program=proto_program, byte_program=byte_program)


TRANSFORMS = st.fixed_dictionaries({
    "crop_size": st.sampled_from([0, 0, 0, 1, 5, 8, 100]),
    "mirror": st.booleans(),
    "mean": st.sampled_from([None, None, "file", (1.0,), (1.0, 2.0, 3.0), (1.0, 2.0)]),
    "force": st.sampled_from([None, None, "force_color", "force_gray"]),
    "scale": st.sampled_from([1.0, 0.00390625]),
})


def _transform_text(t):
    parts = [f"scale: {t['scale']}"]
    if t["crop_size"]:
        parts.append(f"crop_size: {t['crop_size']}")
    if t["mirror"]:
        parts.append("mirror: true")
    if t["mean"] == "file":
        parts.append('mean_file: "mean.binaryproto"')
    elif t["mean"]:
        parts += [f"mean_value: {v}" for v in t["mean"]]
    if t["force"]:
        parts.append(f"{t['force']}: true")
    return " ".join(parts)


def _mean_for_lmdb(db):
    mean = fh.CONF / "io/convert_imageset" / f"mean_{Path(db).name}.binaryproto"
    return mean if mean.is_file() else CIFAR_MEAN


@st.composite
def datum_cases(draw):
    import pyskim
    db = draw(st.sampled_from(fh.CORPUS.lmdbs))
    count = draw(st.integers(1, 6))
    start = draw(st.integers(0, 15))
    programs = st.one_of(BINARY_PROGRAMS, st.tuples(st.lists(DATUM_OP, min_size=1, max_size=2), st.just([])))
    edits = draw(st.lists(st.tuples(st.integers(0, 5), programs).map(lambda t: (t[0], *t[1])),
                          min_size=1, max_size=3))
    transform = draw(TRANSFORMS)
    batch_size = draw(st.integers(1, 4))
    prefetch = draw(st.sampled_from([1, 2, 4, 0]))
    phase = draw(st.sampled_from([pyskim.TEST, pyskim.TEST, pyskim.TRAIN]))

    def build():
        from pyskim.proto import caffe_pb2
        records = [list(r) for r in fh.CORPUS.records(db)[start:start + count]]
        for index, proto_program, byte_program in edits:
            record = records[index % len(records)]
            record[1] = fh.mutate_message_bytes(record[1], caffe_pb2.Datum, proto_program, byte_program)
        records = [tuple(r) for r in records]
        net = _data_net(batch_size, _transform_text(transform), prefetch)
        return {"scenario": "datum", "files": {"net.prototxt": net.encode()}, "lmdbs": {"db": records},
                "links": {"mean.binaryproto": str(_mean_for_lmdb(db))},
                "params": {"net": "net.prototxt", "raw_records": [v for _, v in records], "phase": phase,
                           "forwards": 3}}
    return Case("datum", build, seed=_rel(db), start=start, count=count, edits=edits, transform=transform,
                batch_size=batch_size, prefetch=prefetch, phase=phase)


NON_UTF8 = [b"\xff", b"\x80", b"\xc3", b"\xed\xa0\x80", b"\xc0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82"]
V1_TEXT = st.sampled_from(NON_UTF8 + [b"", b"\x00", b"conv1", b"data", b"label", "\u00e9".encode(), b"A" * 300])
V1_OP = st.one_of(
    st.tuples(st.just("v1text"), POS, st.sampled_from(["first", "last", "insert", "append", "replace"]), V1_TEXT),
    st.tuples(st.just("v1text"), POS, st.just("first"), st.sampled_from(NON_UTF8)),
    st.tuples(st.just("v1type"), POS, st.sampled_from([0, 1, 4, 5, 14, 18, 20, 21, 33, 39, 40, 99, 2**31 - 1, -1])),
    st.tuples(st.just("v1lists"), POS, st.sampled_from(["blobs_lr", "weight_decay", "loss_weight"]),
              st.lists(st.sampled_from([0.0, 1.0, 2.0, -1.0, float("nan"), float("inf"), 1e30]), max_size=4)),
    st.tuples(st.just("v1lists"), POS, st.just("blob_share_mode"),
              st.lists(st.sampled_from([0, 1, 2, 7, 2**31 - 1]), max_size=3)),
    st.tuples(st.just("v1drop"), POS, st.sampled_from(["name", "bottom", "top", "type", "blobs", "param"])),
)
#: V1 edits, alone or followed by generic field edits (on the upgraded-to-be message) or byte edits.
V1_PROGRAMS = st.one_of(
    st.tuples(st.lists(V1_OP, min_size=1, max_size=3), st.just([]), st.just([])),
    st.tuples(st.lists(V1_OP, min_size=1, max_size=3), st.just([]), st.just([])),
    st.tuples(st.lists(V1_OP, min_size=1, max_size=2), st.lists(PROTO_OP, min_size=1, max_size=2), st.just([])),
    st.tuples(st.lists(V1_OP, min_size=1, max_size=2), st.just([]), st.lists(BYTE_OP, min_size=1, max_size=2)),
)


@st.composite
def v1_weights_cases(draw):
    """V1 caffemodels (``layers``, upgraded when read) with mutated names, types and param lists:
    weights loaded into their deploy net, which then runs forward."""
    net, model = draw(st.sampled_from(fh.CORPUS.v1_weights))
    v1_program, proto_program, byte_program = draw(V1_PROGRAMS)

    def build():
        from pyskim.proto import caffe_pb2
        data = fh.mutate_v1(fh.read_seed(model), v1_program)
        data = fh.mutate_message_bytes(data, caffe_pb2.NetParameter, proto_program, byte_program)
        return {"scenario": "weights", "files": {"net.prototxt": _text(net).encode(), "weights.caffemodel": data},
                "params": {"net": "net.prototxt", "weights": "weights.caffemodel"}}
    return Case("v1weights", build, seed=_rel(model), v1_program=v1_program, proto_program=proto_program,
                byte_program=byte_program)


H5_OP = st.one_of(
    st.tuples(st.just("drop"), POS),
    st.tuples(st.just("shape"), POS, DIMS),
    st.tuples(st.just("dtype"), POS, st.sampled_from(["f8", "i8", "u1", "c8", "?", "S"])),
    st.tuples(st.just("to_group"), POS),
    st.tuples(st.just("to_dataset"), POS),
    st.tuples(st.just("scalar"), POS, st.sampled_from([0.0, -1.0, 1e30, float("nan"), "x"])),
    st.tuples(st.just("add"), POS, st.sampled_from(["7", "x", "data", "0", "history"])),
    st.tuples(st.just("fill"), POS, st.sampled_from([float("nan"), float("inf"), -1e38])),
)


@st.composite
def hdf5_cases(draw):
    """Caffe's HDF5 caffemodel / solverstate layouts, valid HDF5 with wrong contents: missing or extra
    groups and datasets, wrong shapes (absurd ones declared but not written), dtypes, scalars."""
    target = draw(st.sampled_from(["weights", "weights", "solverstate"]))
    program = draw(st.lists(H5_OP, min_size=1, max_size=3))
    sgd = fh.CONF / "solvers/sgd_fixed"

    def build():
        if target == "weights":
            tree = fh.hdf5_weights_tree(fh.CONF / "layers/net_lenet/weights.caffemodel")
            data = fh.hdf5_bytes(fh.mutate_hdf5_tree(tree, program))
            return {"scenario": "weights", "files": {"weights.caffemodel.h5": data},
                    "links": {"net.prototxt": str(fh.CONF / "layers/net_lenet/net.prototxt")},
                    "params": {"net": "net.prototxt", "weights": "weights.caffemodel.h5"}}
        tree = fh.hdf5_state_tree(sgd / "final.solverstate")
        data = fh.hdf5_bytes(fh.mutate_hdf5_tree(tree, program))
        links = _solver_links(sgd / "final.solverstate")
        links["solver.prototxt"] = str(sgd / "solver.prototxt")
        return {"scenario": "solver", "files": {"state.solverstate.h5": data}, "links": links,
                "params": {"solver": "solver.prototxt", "state": "state.solverstate.h5"}}
    return Case("hdf5", build, target=target, program=program)


SWAP_TARGETS = ["net", "solver", "weights", "solverstate", "binaryproto", "datum"]


@st.composite
def swapped_cases(draw):
    source = draw(st.sampled_from(fh.CORPUS.all_files()))
    target = draw(st.sampled_from(SWAP_TARGETS))
    byte_program = draw(BYTE_PROGRAM)

    def build():
        data = fh.mutate_bytes(fh.read_seed(source), byte_program)
        lenet = fh.CONF / "layers/net_lenet"
        sgd = fh.CONF / "solvers/sgd_fixed"
        if target == "net":
            return {"scenario": "net", "files": {"net.prototxt": data}, "links": FIXTURE_LINKS,
                    "params": {"net": "net.prototxt"}}
        if target == "solver":
            return {"scenario": "solver", "files": {"solver.prototxt": data}, "links": _solver_links(sgd / "x"),
                    "params": {"solver": "solver.prototxt"}}
        if target == "weights":
            return {"scenario": "weights", "files": {"weights.caffemodel": data},
                    "links": {"net.prototxt": str(lenet / "net.prototxt")},
                    "params": {"net": "net.prototxt", "weights": "weights.caffemodel"}}
        if target == "solverstate":
            links = _solver_links(sgd / "final.solverstate")
            links["solver.prototxt"] = str(sgd / "solver.prototxt")
            return {"scenario": "solver", "files": {"state.solverstate": data}, "links": links,
                    "params": {"solver": "solver.prototxt", "state": "state.solverstate"}}
        if target == "binaryproto":
            net = _data_net(transform='mean_file: "mean.binaryproto"')
            return {"scenario": "binaryproto", "files": {"mean.binaryproto": data, "net.prototxt": net.encode()},
                    "links": {"db": str(fh.CONF / "io/convert_imageset/lmdb_plain")},
                    "params": {"file": "mean.binaryproto", "net": "net.prototxt"}}
        return {"scenario": "datum", "files": {"net.prototxt": _data_net().encode()},
                "lmdbs": {"db": [(b"00000000", data[:1 << 20] or b"\x00")]},
                "params": {"net": "net.prototxt", "raw_records": [data[:1 << 20]], "forwards": 2}}
    return Case("swapped", build, source=_rel(source), target=target, byte_program=byte_program)


STRATEGIES = {
    "net": net_cases(),
    "solver": solver_cases(),
    "weights": weights_cases(),
    "solverstate": state_cases(),
    "binaryproto": binaryproto_cases(),
    "datum": datum_cases(),
    "swapped": swapped_cases(),
    "hdf5": hdf5_cases(),
    "v1weights": v1_weights_cases(),
}
#: Share of the long run's examples per kind.
WEIGHTS = {"net": 0.28, "solver": 0.10, "weights": 0.14, "solverstate": 0.09, "binaryproto": 0.06,
           "datum": 0.20, "swapped": 0.08, "hdf5": 0.05, "v1weights": 0.05}
#: Examples per kind in the default (short) run.
SHORT = {"net": 80, "solver": 20, "weights": 40, "solverstate": 20, "binaryproto": 15, "datum": 50,
         "swapped": 25, "hdf5": 20, "v1weights": 15}

BAD = ("bad", "crash", "hang")


# -- running -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def worker(tmp_path_factory, shared_dir):
    """The sandboxed worker for the fuzz runs, whose seed inputs come from ``../shared``."""
    w = fh.Worker(tmp_path_factory.mktemp("fuzz"), timeout=float(os.environ.get("PYSKIM_FUZZ_TIMEOUT", "60")))
    yield w
    w.stop()


def _describe(case, outcome):
    text = f"{case!r}\n-> {outcome['status']}: {outcome.get('type')}: {outcome.get('message')}"
    if outcome.get("traceback"):
        text += "\n" + outcome["traceback"]
    return text


def _run_kind(kind, worker, examples, collect=None, derandomize=True, save_dir=None):
    """Run ``examples`` hypothesis examples of one input kind through the worker. Without ``collect``
    the first finding fails (and hypothesis shrinks it); with a ``collect`` dict, findings and
    outcome counts are gathered and the run goes on."""

    @settings(max_examples=examples, deadline=None, derandomize=derandomize, database=None,
              suppress_health_check=list(HealthCheck),
              phases=[Phase.explicit, Phase.generate] if collect is not None else list(Phase))
    @given(case=STRATEGIES[kind])
    def run(case):
        payload = case.payload()
        outcome, seconds = worker.run(payload)
        if collect is None:
            assert outcome["status"] not in BAD, _describe(case, outcome)
            return
        collect["counts"][outcome["status"]] += 1
        collect["errors"][outcome.get("type", "-")] += 1
        collect["by_kind"][f"{kind} {outcome['status']} {outcome.get('type', '')}"] += 1
        collect["stages"][f"{kind} {outcome.get('stage', '-')}"] += 1
        samples = collect["samples"].setdefault(f"{kind} {outcome.get('type', 'ok')}", [])
        if len(samples) < 5:
            samples.append(outcome.get("message", "")[:200])
        collect["seconds"].append(seconds)
        if outcome["status"] in BAD:
            index = len(collect["findings"])
            collect["findings"].append({"kind": kind, "case": repr(case), "outcome": outcome})
            if save_dir is not None:
                folder = Path(save_dir) / f"finding_{index:04d}_{kind}"
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "case.txt").write_text(_describe(case, outcome))
                for name, data in payload.get("files", {}).items():
                    (folder / name).write_bytes(data)
    run()


def test_harness_detects_failures(tmp_path):
    """The worker reports a documented error as such, and any other exception, a MemoryError (under
    its RLIMIT_DATA), a segfault and a hang as findings; it is restarted after a crash or a hang."""
    worker = fh.Worker(tmp_path, timeout=3)
    try:
        expected = {"ok": ("ok", None), "pyskim": ("error", "NetError"), "raw": ("bad", "KeyError"),
                    "memory": ("bad", "MemoryError"), "crash": ("crash", "WorkerDied"), "hang": ("hang", "Timeout")}
        for what, (status, error) in expected.items():
            outcome, _ = worker.run({"scenario": "selftest", "params": {"what": what}})
            assert (outcome["status"], outcome.get("type")) == (status, error), (what, outcome)
        assert worker.restarts == 2
        outcome, _ = worker.run({"scenario": "selftest", "params": {"what": "pyskim"}})
        assert outcome["status"] == "error"
    finally:
        worker.stop()


@pytest.mark.parametrize("kind", sorted(SHORT))
def test_fuzz_short(kind, worker):
    """The default run: a fixed (derandomized) sample of every input kind; about 30-50 s in total."""
    _run_kind(kind, worker, SHORT[kind])


@pytest.mark.slow
def test_fuzz_v1_caffemodels(worker):
    """``PYSKIM_FUZZ_V1_EXAMPLES`` (default 450) mutated V1 caffemodels, every one loaded and run:
    only PyskimErrors, never a raw traceback (the run that found non-UTF-8 names let 2 of 450 out).
    All findings are collected before the test fails on them."""
    total = int(os.environ.get("PYSKIM_FUZZ_V1_EXAMPLES", "450"))
    collect = {"counts": Counter(), "errors": Counter(), "by_kind": Counter(), "stages": Counter(), "samples": {},
               "seconds": [], "findings": []}
    _run_kind("v1weights", worker, total, collect=collect, derandomize=False)
    assert sum(collect["counts"].values()) >= total
    assert collect["counts"]["error"] and collect["counts"]["ok"], collect["counts"]   # both outcomes occur
    assert not collect["findings"], "\n\n".join(f["case"] + "\n" + json.dumps(f["outcome"], indent=1)
                                                for f in collect["findings"][:5])


@pytest.mark.slow
def test_fuzz_long(worker, tmp_path_factory):
    """``PYSKIM_FUZZ_EXAMPLES`` examples (default 10000) spread over the input kinds; all findings are
    collected into the report before the test fails on them."""
    total = int(os.environ.get("PYSKIM_FUZZ_EXAMPLES", "10000"))
    report_path = Path(os.environ.get("PYSKIM_FUZZ_REPORT") or tmp_path_factory.mktemp("fuzz_report") / "fuzz_report.json")
    kinds = [k.strip() for k in os.environ.get("PYSKIM_FUZZ_KINDS", ",".join(WEIGHTS)).split(",") if k.strip()]
    share = sum(WEIGHTS[k] for k in kinds)
    collect = {"counts": Counter(), "errors": Counter(), "by_kind": Counter(), "stages": Counter(), "samples": {},
               "seconds": [],
               "findings": []}
    per_kind = {}
    start = time.monotonic()
    for kind in kinds:
        n = max(1, round(total * WEIGHTS[kind] / share))
        before = sum(collect["counts"].values())
        t0 = time.monotonic()
        _run_kind(kind, worker, n, collect=collect, derandomize=False, save_dir=report_path.parent / "findings")
        per_kind[kind] = {"requested": n, "run": sum(collect["counts"].values()) - before,
                          "seconds": round(time.monotonic() - t0, 1)}
    report = {
        "examples": sum(collect["counts"].values()),
        "seconds": round(time.monotonic() - start, 1),
        "per_kind": per_kind,
        "outcomes": dict(collect["counts"]),
        "error_types": dict(collect["errors"].most_common()),
        "by_kind": dict(sorted(collect["by_kind"].items())),
        "stages_reached": dict(sorted(collect["stages"].items())),
        "samples": collect["samples"],
        "slowest_example_s": round(max(collect["seconds"], default=0), 2),
        "worker_restarts": worker.restarts,
        "findings": collect["findings"],
    }
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=1, default=str))
    assert not collect["findings"], (f"{len(collect['findings'])} findings (report: {report_path}):\n"
                                     + "\n\n".join(f["case"] + "\n" + json.dumps(f["outcome"], indent=1)
                                                   for f in collect["findings"][:5]))
