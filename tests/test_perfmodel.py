"""The roofline model (pyskim.perf.model): monotone curves, break-even and saturation densities as
defined on the model's own time curves; the machine profile (pyskim.perf.profile: cache, default,
injection; a forward never calibrates), the calibration (pyskim.perf.calibrate, ``pyskim calibrate``),
and AUTO's choices (with a fixed, injected machine profile, so the tests are deterministic)."""
import dataclasses
import json
import logging
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import pyskim
from pyskim.kernels import sparse as sparse_kernels
from pyskim.kernels.sparse import MAX_TILE
from pyskim.perf import calibrate as perfcalib
from pyskim.perf import model as perfmodel
from pyskim.perf import profile as perfprofile
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
            dataclasses.replace(FIXED, bandwidth=1e9), dataclasses.replace(FIXED, sparse_overhead=0.5),
            dataclasses.replace(FIXED, threads=2, batched_dense_eff=0.9, batched_sparse_eff=0.3)]
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
        # with every column kept CCNMM does the dense product plus its gather and bias passes
        assert cc[-1] > perfmodel.dense_time(shape, profile)


def test_times_grow_with_work():
    small, big = ConvShape(1, 64, 14, 14, 64), ConvShape(4, 64, 14, 14, 64)
    wide = ConvShape(1, 128, 14, 14, 64)
    for fn in (perfmodel.dense_time, lambda s, p: perfmodel.sparse_time(s, 0.1, p)):
        assert fn(small, FIXED) < fn(big, FIXED)
        assert fn(small, FIXED) < fn(wide, FIXED)
    fast = dataclasses.replace(FIXED, sparse_eff=0.4, bandwidth=84e9)
    assert perfmodel.sparse_time(small, 0.1, fast) < perfmodel.sparse_time(small, 0.1, FIXED)


def test_convolution_efficiencies_follow_the_batch():
    """A convolution's e_d and e_s0 go from their batch-1 values to the CALIBRATION_BATCH ones linearly
    in the batch and stay there; without batched values (0) and for inner products they do not move."""
    assert perfmodel.CALIBRATION_BATCH == 8
    assert perfmodel.conv_efficiency(0.5, 0.7, 1) == 0.5
    assert perfmodel.conv_efficiency(0.5, 0.7, 4) == pytest.approx(0.5 + 0.2 * 3 / 7)
    assert perfmodel.conv_efficiency(0.5, 0.7, 8) == perfmodel.conv_efficiency(0.5, 0.7, 64) == pytest.approx(0.7)
    assert perfmodel.conv_efficiency(0.5, 0.0, 16) == 0.5
    batched = dataclasses.replace(FIXED, batched_dense_eff=1.0, batched_sparse_eff=0.4)

    def conv(batch):
        return ConvShape(batch, 256, 13, 13, 256, (3, 3), pad=(1, 1))
    for efficiency, ratio in ((perfmodel.dense_efficiency, 1.0 / 0.8), (perfmodel.sparse_efficiency, 0.4 / 0.2)):
        assert efficiency(conv(1), batched) == efficiency(conv(1), FIXED)
        for batch in (8, 16):
            assert efficiency(conv(batch), batched) == pytest.approx(ratio * efficiency(conv(batch), FIXED))
        assert efficiency(conv(16), FIXED) == efficiency(conv(1), FIXED)
        for shape in (FcShape(16, 4096, 4096), FcShape(1, 4096, 4096)):
            assert efficiency(shape, batched) == efficiency(shape, FIXED)
    for time in (perfmodel.dense_time, lambda s, p: perfmodel.sparse_time(s, 0.1, p)):
        assert time(conv(1), batched) == time(conv(1), FIXED)
        assert time(conv(4), batched) < time(conv(4), FIXED)
        assert time(conv(16), batched) < time(conv(16), FIXED)


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
        FIXED.sparse_eff * FIXED.stride_eff * perfmodel.lane_utilization(strided)
        * perfmodel.tile_efficiency(strided, FIXED.tile_overhead))


def test_tile_efficiency_charges_each_tile_per_nonzero(monkeypatch):
    """tau = V / (V + k·tiles) of the kernel's plan: 13x13 3x3 runs 13 vectors (aligned, as on an Intel
    CPU) in as few tiles as the kernel's register tile allows (one with AVX-512), 4x4 1x1 one vector,
    56x56 several tiles; an inner product has none; the calibration recovers k from a plan and its
    one-vector-tile version."""
    monkeypatch.setattr(sparse_kernels, "SPLIT_LOADS_COST", True)
    calib, tiny, wide = (ConvShape(1, 256, 13, 13, 256, (3, 3), pad=(1, 1)), ConvShape(16, 512, 4, 4, 128, (1, 1)),
                         ConvShape(1, 64, 56, 56, 64, (3, 3), pad=(1, 1)))
    plan = perfmodel.conv_work(wide)
    assert plan.tiles > 1
    calib_tiles = -(-13 // MAX_TILE)
    for shape, vectors, tiles in ((calib, 13, calib_tiles), (tiny, 1, 1), (wide, plan.vectors, plan.tiles)):
        assert perfmodel.conv_work(shape).vectors == vectors
        assert perfmodel.tile_efficiency(shape, 2.0) == pytest.approx(vectors / (vectors + 2.0 * tiles))
        assert perfmodel.tile_efficiency(shape, 0.0) == 1.0
    assert perfmodel.tile_efficiency(FcShape(16, 4096, 4096), 2.0) == 1.0
    # the overhead slows the one-vector layer's nonzeros more than the 13-vector layer's
    free, costly = dataclasses.replace(FIXED, tile_overhead=0.0), dataclasses.replace(FIXED, tile_overhead=2.0)
    assert perfmodel.sparse_efficiency(tiny, costly) / perfmodel.sparse_efficiency(tiny, free) == pytest.approx(1 / 3)
    assert (perfmodel.sparse_efficiency(calib, costly) / perfmodel.sparse_efficiency(calib, free)
            == pytest.approx(13 / (13 + 2 * calib_tiles)))
    for k in (0.0, 0.7, 1.5, 4.0):
        ratio = (13 + k * 13) / (13 + k * 1)
        assert perfcalib._tile_overhead(13, 1, ratio) == pytest.approx(k)
    assert perfcalib._tile_overhead(13, 1, 13.0) == perfcalib.TILE_OVERHEAD_MAX


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


def test_default_machine_numbers():
    assert perfmodel.peak_gflops_for_isa({"avx512f", "avx2", "fma"}) == 267.0
    assert perfmodel.peak_gflops_for_isa({"avx2", "fma"}) == 134.0
    assert perfmodel.peak_gflops_for_isa({"sse2"}) == 34.0
    assert [perfmodel.default_bandwidth(t) / 1e9 for t in (1, 2, 4, 8)] == [42.0, 75.0, 150.0, 150.0]
    profile = perfprofile.default_profile(3)
    assert profile.threads == 3 and profile.source == "default" and profile.bandwidth == 112.5e9


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PYSKIM_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("PYSKIM_PERFMODEL", raising=False)
    perfprofile.clear_memory_cache()
    yield tmp_path
    perfprofile.clear_memory_cache()


@pytest.fixture
def no_calibration(monkeypatch):
    """Any calibration fails the test."""
    def fail(*args, **kwargs):
        pytest.fail("calibrated")
    monkeypatch.setattr(perfcalib, "calibrate", fail)
    monkeypatch.setattr(perfcalib, "calibrate_and_save", fail)


def test_saved_profile_is_cached_per_thread_count(cache_dir, no_calibration):
    assert perfprofile.get_profile(threads=1).source == "default"          # nothing cached yet
    assert not (cache_dir / perfprofile.CACHE_FILE).exists()
    perfprofile.clear_memory_cache()
    saved = dataclasses.replace(FIXED, source="saved")
    assert perfprofile.save_profile(saved)
    assert perfprofile.get_profile(threads=1) is saved                     # in-memory
    perfprofile.clear_memory_cache()
    assert perfprofile.get_profile(threads=1) == saved                     # from the JSON file
    data = json.loads((cache_dir / perfprofile.CACHE_FILE).read_text())
    key = perfprofile.profile_key(1)
    assert set(data) == {key}
    assert perfprofile.cpu_model() in key and "threads=1" in key and pyskim.__version__ in key
    assert perfprofile.get_profile(threads=2).source == "default"          # another thread count: not cached
    perfprofile.save_profile(dataclasses.replace(saved, threads=2))
    assert set(json.loads((cache_dir / perfprofile.CACHE_FILE).read_text())) == {key, perfprofile.profile_key(2)}


def test_default_profile_env_ignores_the_cache(cache_dir, no_calibration, monkeypatch):
    perfprofile.save_profile(dataclasses.replace(FIXED, source="saved"))
    perfprofile.clear_memory_cache()
    monkeypatch.setenv("PYSKIM_PERFMODEL", "default")
    profile = perfprofile.get_profile(threads=1)
    assert profile.source == "default" and profile.cpu == perfprofile.cpu_model()


def test_injected_profile_wins(cache_dir):
    with perfprofile.use_profile(FIXED):
        assert perfprofile.get_profile() is FIXED
        assert perfprofile.get_profile(threads=7) is FIXED
    assert perfprofile.set_profile(None) is None


def test_real_calibration_is_plausible():
    for quick in (False, True):
        p = perfcalib.calibrate(1, quick=quick)
        assert p.threads == 1 and p.source.startswith("calibrated")
        for name in ("bandwidth", "dense_eff", "sparse_eff", "batched_dense_eff", "batched_sparse_eff", "stride_eff",
                     "fc_sparse_eff", "spmv_eff"):
            value = getattr(p, name)
            assert math.isfinite(value) and value > 0, name
        assert 0 <= p.dense_overhead < 0.01 and 0 <= p.sparse_overhead < 0.01
        assert 0 <= p.tile_overhead <= perfcalib.TILE_OVERHEAD_MAX


def test_pyskim_calibrate_writes_the_cache(tmp_path):
    env = dict(os.environ, PYSKIM_CACHE_DIR=str(tmp_path))
    env.pop("PYSKIM_PERFMODEL", None)
    result = subprocess.run([sys.executable, "-m", "pyskim", "calibrate", "-quick", "-threads", "1"],
                            capture_output=True, text=True, timeout=300, env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert "Calibrating the performance model for 1 thread(s):" in result.stderr
    data = json.loads((tmp_path / perfprofile.CACHE_FILE).read_text())
    assert list(data) == [perfprofile.profile_key(1)]
    profile = MachineProfile.from_json(data[perfprofile.profile_key(1)])
    assert profile.threads == 1 and profile.source.startswith("calibrated") and profile.bandwidth > 0


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
    with perfprofile.use_profile(FIXED):
        for density, expected in ((0.01, sparse_name), (1.0, "dense")):
            net = _one_layer_net(kind, density)
            net.forward()
            assert net.layers[1].engine.last_mode == expected, density


def test_busy_calibration_is_redone_when_quiet(cache_dir, monkeypatch):
    assert perfprofile.needs_calibration(1)                                # nothing cached
    perfprofile.save_profile(dataclasses.replace(FIXED, source="busy", load=3.0))
    monkeypatch.setattr(perfprofile, "current_load", lambda: 2.0)
    assert not perfprofile.needs_calibration(1)                            # still busy: keep it
    monkeypatch.setattr(perfprofile, "current_load", lambda: 0.1)
    assert perfprofile.needs_calibration(1)
    perfprofile.save_profile(dataclasses.replace(FIXED, source="quiet", load=0.1))
    assert not perfprofile.needs_calibration(1)
    assert perfprofile.load_cached_profile(1).source == "quiet"


def test_forward_in_auto_mode_never_calibrates(cache_dir, no_calibration, caplog):
    with caplog.at_level(logging.INFO, logger="pyskim"):
        for kind in ("conv", "fc"):
            net = _one_layer_net(kind, 0.05)
            net.forward()
            net.forward()
    threads = perfprofile.resolve_threads(None)
    expected = (f"Performance model: default machine profile for {threads} thread(s) (no calibration cached in "
                f"{cache_dir / perfprofile.CACHE_FILE}); `pyskim calibrate` measures this machine")
    assert [r.getMessage() for r in caplog.records if "machine profile" in r.getMessage()] == [expected]
    assert not (cache_dir / perfprofile.CACHE_FILE).exists()


def test_accuracy_rows_and_summary():
    from pyskim.perf.accuracy import LayerAccuracy, summarize
    rows = [
        # dense 10 vs predicted 8 (+25%, within), sparse 5 vs 4 (+25%); AUTO picked sparse, the faster
        LayerAccuracy("a", 0.1, {"dense": 10.0, "sparse": 5.0}, {"dense": 8.0, "sparse": 4.0}, "sparse", 9.0),
        # dense 2 vs 4 (-50%), sparse 3 vs 3 (0%); AUTO picked sparse: 50% slower than dense
        LayerAccuracy("b", 0.5, {"dense": 2.0, "sparse": 3.0}, {"dense": 4.0, "sparse": 3.0}, "sparse", 1.0),
        # AUTO ran a mode that was not forced: its own time counts (2.1 vs the faster 2.0: 5%)
        LayerAccuracy("c", 0.2, {"dense": 2.0, "sparse": 6.0}, {"dense": 2.0, "sparse": 9.0}, "ccnmm", 2.1),
    ]
    assert rows[0].error("dense") == pytest.approx(0.25) and rows[1].error("dense") == pytest.approx(-0.5)
    assert [r.fastest for r in rows] == ["sparse", "dense", "dense"]
    assert [r.regret for r in rows] == pytest.approx([0.0, 0.5, 0.05])
    s = summarize(rows)
    assert (s.predictions, s.predictions_within, s.layers, s.auto_within) == (6, 4, 3, 2)
    assert s.worst_regret == pytest.approx(0.5) and s.prediction_share == pytest.approx(4 / 6)
    assert summarize(rows, tolerance=0.2).predictions_within == 2


def _rounds(monkeypatch, sequence):
    """Make each calibration round return the next coefficients of ``sequence`` (dicts of overrides)."""
    base = {"bandwidth": 20e9, "dense_eff": 0.5, "sparse_eff": 0.2, "stride_eff": 0.8, "fc_sparse_eff": 0.1,
            "spmv_eff": 0.01, "dense_overhead": 2e-5, "sparse_overhead": 1e-5}
    it = iter(sequence)
    monkeypatch.setattr(perfcalib, "_measure", lambda threads, quick, report: {**base, **next(it)})


def test_calibration_checks_every_coefficient_twice(cache_dir, monkeypatch):
    _rounds(monkeypatch, [{}, {"sparse_eff": 0.21}])               # agree within 15%: two rounds
    p = perfcalib.calibrate(1)
    assert p.consistent and "2 rounds" in p.source and p.sparse_eff == pytest.approx(0.205)
    # fc_sparse_eff 0.026 then 0.121: a third round decides, the median drops the outlier
    _rounds(monkeypatch, [{"fc_sparse_eff": 0.026}, {"fc_sparse_eff": 0.121}, {"fc_sparse_eff": 0.118}])
    p = perfcalib.calibrate(1)
    assert p.consistent and "3 rounds" in p.source and p.fc_sparse_eff == pytest.approx(0.118)
    assert p.spread == pytest.approx((0.121 - 0.026) / 0.118)
    # never twice alike: MAX_ROUNDS rounds, marked, and asked for again once the machine is quiet
    _rounds(monkeypatch, [{"dense_eff": v} for v in (0.1, 0.3, 0.6, 0.9)])
    p = perfcalib.calibrate(1)
    assert not p.consistent and f"{perfcalib.MAX_ROUNDS} rounds" in p.source
    perfprofile.save_profile(p)
    monkeypatch.setattr(perfprofile, "current_load", lambda: 0.0)
    assert perfprofile.needs_calibration(1)
    perfprofile.save_profile(dataclasses.replace(p, consistent=True, load=0.0))
    assert not perfprofile.needs_calibration(1)


def test_profiles_belong_to_one_kernel_build(cache_dir):
    from pyskim.kernels import build_fingerprint
    fingerprint = build_fingerprint()
    assert len(fingerprint) == 12 and int(fingerprint, 16) >= 0
    key = perfprofile.profile_key(1)
    assert key.endswith(f"+{fingerprint}") and "threads=1" in key
    stale = key.replace(fingerprint, "0" * 12 if fingerprint != "0" * 12 else "1" * 12)
    (cache_dir / perfprofile.CACHE_FILE).write_text(json.dumps({stale: FIXED.to_json()}))
    assert perfprofile.load_cached_profile(1) is None and perfprofile.needs_calibration(1)
    (cache_dir / perfprofile.CACHE_FILE).write_text(json.dumps({key: FIXED.to_json()}))
    assert perfprofile.load_cached_profile(1) == FIXED
