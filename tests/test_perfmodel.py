"""The roofline model (pyskim.perf.model): monotone curves, break-even and saturation densities as
defined on the model's own time curves, the calibration cache, and AUTO's choices (with a fixed,
injected machine profile, so the tests are deterministic)."""
import dataclasses
import json
import math

import numpy as np
import pytest

import pyskim
from pyskim.perf import model as perfmodel
from pyskim.perf.model import ConvShape, FcShape, MachineProfile

FIXED = MachineProfile(threads=1, peak_flops=267e9, bandwidth=42e9, dense_eff=0.8, sparse_eff=0.2, stride_eff=0.8,
                       fc_sparse_eff=0.1, spmv_eff=0.01, dense_overhead=20e-6, sparse_overhead=10e-6, cpu="test CPU",
                       source="test")
ALEXNET = [ConvShape(1, 3, 227, 227, 96, (11, 11), (4, 4), (0, 0)),
           ConvShape(1, 96, 27, 27, 256, (5, 5), (1, 1), (2, 2), group=2),
           ConvShape(16, 256, 13, 13, 384, (3, 3), (1, 1), (1, 1)),
           ConvShape(1, 384, 13, 13, 384, (3, 3), (1, 1), (1, 1), group=2),
           ConvShape(16, 384, 13, 13, 256, (3, 3), (1, 1), (1, 1), group=2)]
SHAPES = ALEXNET + [ConvShape(2, 64, 56, 56, 64, (1, 1)), ConvShape(1, 4, 5, 5, 3, (3, 3), dilation=(2, 2), pad=(2, 2)),
                    FcShape(1, 9216, 4096), FcShape(16, 4096, 4096), FcShape(3, 36, 5)]
PROFILES = [FIXED, dataclasses.replace(FIXED, threads=2, bandwidth=75e9, sparse_eff=0.05),
            dataclasses.replace(FIXED, bandwidth=1e9), dataclasses.replace(FIXED, sparse_overhead=0.5)]
DENSITIES = np.linspace(0, 1, 201)


def _ids(values):
    return [str(i) for i in range(len(values))]


@pytest.mark.parametrize("profile", PROFILES, ids=_ids(PROFILES))
@pytest.mark.parametrize("shape", SHAPES, ids=_ids(SHAPES))
def test_times_are_monotone_in_density(shape, profile):
    sparse = [perfmodel.sparse_time(shape, d, profile) for d in DENSITIES]
    assert all(b >= a for a, b in zip(sparse, sparse[1:]))
    assert all(t > 0 for t in sparse)
    speedups = perfmodel.speedup_curve(shape, DENSITIES[1:], profile)
    assert all(b <= a * (1 + 1e-12) for a, b in zip(speedups, speedups[1:]))
    if not isinstance(shape, FcShape):
        cc = [perfmodel.ccnmm_time(shape, c, profile) for c in DENSITIES]
        assert all(b >= a for a, b in zip(cc, cc[1:]))
        assert cc[-1] == pytest.approx(perfmodel.dense_time(shape, profile))


def test_times_grow_with_work():
    small, big = ConvShape(1, 64, 14, 14, 64), ConvShape(4, 64, 14, 14, 64)
    wide = ConvShape(1, 128, 14, 14, 64)
    for fn in (perfmodel.dense_time, lambda s, p: perfmodel.sparse_time(s, 0.1, p)):
        assert fn(small, FIXED) < fn(big, FIXED)
        assert fn(small, FIXED) < fn(wide, FIXED)
    fast = dataclasses.replace(FIXED, sparse_eff=0.4, bandwidth=84e9)
    assert perfmodel.sparse_time(small, 0.1, fast) < perfmodel.sparse_time(small, 0.1, FIXED)


@pytest.mark.parametrize("profile", PROFILES, ids=_ids(PROFILES))
@pytest.mark.parametrize("shape", SHAPES, ids=_ids(SHAPES))
def test_break_even_is_where_sparse_stops_winning(shape, profile):
    dense = perfmodel.dense_time(shape, profile)
    d_be = perfmodel.break_even_density(shape, profile)
    assert 0.0 <= d_be <= 1.0
    for d in DENSITIES:
        wins = perfmodel.sparse_time(shape, d, profile) <= dense * (1 + 1e-9)
        if d < d_be - 1e-9:
            assert wins, (d, d_be)
        elif d > d_be + 1e-9:
            assert not wins, (d, d_be)
    if 0 < d_be < 1:
        assert perfmodel.sparse_time(shape, d_be, profile) == pytest.approx(dense, rel=1e-9)


@pytest.mark.parametrize("profile", PROFILES, ids=_ids(PROFILES))
@pytest.mark.parametrize("shape", SHAPES, ids=_ids(SHAPES))
def test_saturation_is_where_compute_meets_memory(shape, profile):
    a, b, m, o = perfmodel.sparse_terms(shape, profile)
    d_sat = perfmodel.saturation_density(shape, profile)
    assert 0.0 <= d_sat <= 1.0
    for d in DENSITIES:
        t = perfmodel.sparse_time(shape, d, profile)
        assert t == pytest.approx(max(a * d, b + m * d) + o, rel=1e-12)
        if d <= d_sat:      # bandwidth/overhead bound: the memory term sets the time
            assert t == pytest.approx(b + m * d + o, rel=1e-9)
        else:
            assert t == pytest.approx(a * d + o, rel=1e-9)
    if 0 < d_sat < 1:
        assert a * d_sat == pytest.approx(b + m * d_sat, rel=1e-9)
    # below saturation the speedup is within m*d_sat of its limit t_d / (b + o)
    dense = perfmodel.dense_time(shape, profile)
    limit = dense / (b + o)
    assert perfmodel.speedup_curve(shape, [0.0], profile)[0] == pytest.approx(limit)


def test_break_even_extremes():
    tiny = ConvShape(1, 1, 4, 4, 1, (1, 1))
    slow = dataclasses.replace(FIXED, sparse_overhead=1.0)
    assert perfmodel.break_even_density(tiny, slow) == 0.0
    fast = dataclasses.replace(FIXED, sparse_eff=50.0, dense_overhead=1.0)
    assert perfmodel.break_even_density(ALEXNET[2], fast) == 1.0


def test_lane_utilization():
    assert perfmodel.lane_utilization(ConvShape(1, 1, 1, 16, 1, (1, 1))) == 1.0
    assert perfmodel.lane_utilization(ConvShape(1, 1, 16, 16, 1, (1, 1))) == 1.0
    u13 = perfmodel.lane_utilization(ConvShape(1, 8, 13, 13, 8, (3, 3), pad=(1, 1)))
    u55 = perfmodel.lane_utilization(ConvShape(1, 8, 55, 55, 8, (3, 3), pad=(1, 1)))
    assert 0 < u13 < u55 < 1
    assert perfmodel.lane_utilization(FcShape(16, 10, 10)) == 1.0
    assert perfmodel.lane_utilization(FcShape(8, 10, 10)) == 0.5
    strided = ConvShape(1, 8, 27, 27, 8, (3, 3), (2, 2), (1, 1))
    assert perfmodel.sparse_efficiency(strided, FIXED) == pytest.approx(
        FIXED.sparse_eff * FIXED.stride_eff * perfmodel.lane_utilization(strided))


def test_predict_and_choose():
    shape = ALEXNET[2]
    p = perfmodel.predict(shape, 0.01, FIXED)
    assert p.mode == "sparse" and p.speedup > 1 and p.best == p.sparse
    assert perfmodel.predict(shape, 1.0, FIXED).mode == "dense"
    assert perfmodel.choose(shape, 0.01, FIXED, candidates=("dense",)) == "dense"
    assert perfmodel.choose(shape, 1.0, FIXED, column_density=0.05) == "ccnmm"
    assert perfmodel.choose(FcShape(1, 9216, 4096), 0.01, FIXED) == "sparse"
    assert perfmodel.choose(FcShape(1, 9216, 4096), 0.9, FIXED) == "dense"


def test_profile_json_round_trip():
    assert MachineProfile.from_json(json.loads(json.dumps(FIXED.to_json()))) == FIXED
    assert MachineProfile.from_json({**FIXED.to_json(), "unknown": 1}) == FIXED
    old = FIXED.to_json()
    del old["load"], old["spmv_eff"]                 # a cache written by an older pyskim
    assert MachineProfile.from_json(old).spmv_eff == MachineProfile().spmv_eff


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PYSKIM_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("PYSKIM_PERFMODEL", raising=False)
    perfmodel.clear_memory_cache()
    yield tmp_path
    perfmodel.clear_memory_cache()


def test_calibration_is_cached(cache_dir, monkeypatch):
    calls = []

    def fake_calibrate(threads=None):
        calls.append(threads)
        return dataclasses.replace(FIXED, threads=threads, source="fake")
    monkeypatch.setattr(perfmodel, "calibrate", fake_calibrate)
    first = perfmodel.get_profile(threads=1)
    assert calls == [1] and first.source == "fake"
    assert perfmodel.get_profile(threads=1) is first            # in-memory
    perfmodel.clear_memory_cache()
    assert perfmodel.get_profile(threads=1) == first and calls == [1]   # from the JSON file
    data = json.loads((cache_dir / perfmodel.CACHE_FILE).read_text())
    key = perfmodel.profile_key(1)
    assert key in data and perfmodel.cpu_model() in key and "threads=1" in key and pyskim.__version__ in key
    perfmodel.get_profile(threads=2)                              # another thread count: calibrated again
    assert calls == [1, 2]
    assert set(json.loads((cache_dir / perfmodel.CACHE_FILE).read_text())) == {key, perfmodel.profile_key(2)}


def test_default_profile_env_skips_calibration(cache_dir, monkeypatch):
    monkeypatch.setenv("PYSKIM_PERFMODEL", "default")
    monkeypatch.setattr(perfmodel, "calibrate", lambda threads=None: pytest.fail("calibrated"))
    assert perfmodel.get_profile(threads=1).source == "default"


def test_injected_profile_wins(cache_dir):
    with perfmodel.use_profile(FIXED):
        assert perfmodel.get_profile() is FIXED
        assert perfmodel.get_profile(threads=7) is FIXED
    assert perfmodel.set_profile(None) is None


def test_real_calibration_is_plausible():
    p = perfmodel.calibrate(1)
    assert p.threads == 1 and p.source.startswith("calibrated")
    for name in ("bandwidth", "dense_eff", "sparse_eff", "stride_eff", "fc_sparse_eff", "spmv_eff"):
        value = getattr(p, name)
        assert math.isfinite(value) and value > 0, name
    assert 0 <= p.dense_overhead < 0.01 and 0 <= p.sparse_overhead < 0.01


def _one_layer_net(kind, density, batch=1, seed=0):
    from pyskim.proto import caffe_pb2
    param = caffe_pb2.NetParameter()
    data = param.layer.add(name="data", type="Input", top=["data"])
    if kind == "conv":
        data.input_param.shape.add().dim.extend([batch, 64, 28, 28])
        lp = param.layer.add(name="layer", type="Convolution", bottom=["data"], top=["out"])
        lp.convolution_param.num_output = 64
        lp.convolution_param.kernel_size.append(3)
        lp.convolution_param.pad.append(1)
        lp.convolution_param.conv_mode = caffe_pb2.ConvolutionParameter.AUTO
    else:
        data.input_param.shape.add().dim.extend([batch, 2048])
        lp = param.layer.add(name="layer", type="InnerProduct", bottom=["data"], top=["out"])
        lp.inner_product_param.num_output = 1024
        lp.inner_product_param.gemm_mode = caffe_pb2.InnerProductParameter.AUTO
    net = pyskim.Net(param, pyskim.TEST)
    rng = np.random.default_rng(seed)
    w = net.params["layer"][0].data
    w[...] = rng.standard_normal(w.shape) * (rng.random(w.shape) < density)
    net.blobs["data"].data[...] = rng.standard_normal(net.blobs["data"].data.shape)
    return net


@pytest.mark.parametrize("kind, sparse_name", [("conv", "sparse"), ("fc", "spmdm")])
def test_auto_picks_sparse_for_sparse_and_dense_for_dense(kind, sparse_name):
    with perfmodel.use_profile(FIXED):
        for density, expected in ((0.01, sparse_name), (1.0, "dense")):
            net = _one_layer_net(kind, density)
            net.forward()
            assert net.layers[1]._sparse_modes.last_mode == expected, density


def test_busy_calibration_is_redone_when_quiet(cache_dir, monkeypatch):
    perfmodel.save_profile(dataclasses.replace(FIXED, source="busy", load=3.0))
    monkeypatch.setattr(perfmodel, "calibrate", lambda threads=None: dataclasses.replace(FIXED, source="quiet"))
    monkeypatch.setattr(perfmodel, "current_load", lambda: 2.0)
    assert perfmodel.get_profile(threads=1).source == "busy"          # still busy: keep it
    perfmodel.clear_memory_cache()
    monkeypatch.setattr(perfmodel, "current_load", lambda: 0.1)
    assert perfmodel.get_profile(threads=1).source == "quiet"
    assert perfmodel.load_cached_profile(1).source == "quiet"
