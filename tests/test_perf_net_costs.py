"""The costs a forward pass adds to a layer (pyskim.perf.net_costs): the model's input passes and
CCNMM's gather, the fit of the per-call overhead and the input cost, and the calibration net itself."""
import dataclasses
import math

import pytest

from pyskim.core.net import Net
from pyskim.kernels.threads import using_threads
from pyskim.perf import model as perfmodel
from pyskim.perf import net_costs
from pyskim.perf.model import ConvShape, FcShape, MachineProfile
from pyskim.proto import caffe_pb2

BASE = MachineProfile(threads=1, peak_flops=267e9, bandwidth=42e9, dense_eff=0.8, sparse_eff=0.2,
                      fc_sparse_eff=0.1, spmv_eff=0.01, dense_overhead=20e-6, sparse_overhead=10e-6,
                      dense_input_cost=0.0, sparse_input_cost=0.0, cpu="test CPU", source="test")
CONV_1X1 = ConvShape(1, 480, 14, 14, 16, (1, 1))
CONV_3X3 = ConvShape(4, 256, 13, 13, 384, (3, 3), pad=(1, 1))
FC = FcShape(16, 4096, 1000)


@pytest.mark.parametrize("shape", [CONV_1X1, CONV_3X3])
def test_input_costs_add_one_pass_over_the_input(shape):
    costly = dataclasses.replace(BASE, dense_input_cost=2e-9, sparse_input_cost=3e-9)
    assert perfmodel.dense_time(shape, costly) - perfmodel.dense_time(shape, BASE) == pytest.approx(
        2e-9 * shape.inputs)
    for d in (0.0, 0.1, 1.0):
        assert perfmodel.sparse_time(shape, d, costly) - perfmodel.sparse_time(shape, d, BASE) == pytest.approx(
            3e-9 * shape.inputs)
    assert perfmodel.ccnmm_time(shape, 0.5, costly) - perfmodel.ccnmm_time(shape, 0.5, BASE) == pytest.approx(
        2e-9 * shape.inputs)
    # the input pass is part of the fixed cost o, which the break-even density already weighs
    fixed = perfmodel.sparse_terms(shape, costly)[3] - perfmodel.sparse_terms(shape, BASE)[3]
    assert fixed == pytest.approx(3e-9 * shape.inputs)


def test_batch_1_inner_product_overlaps_its_weight_stream():
    """SpMV prefetches its weights while it computes: the longer of compute and stream sets its time;
    at batch 16 (SpMDM) they still add up."""
    for shape in (FcShape(1, 9216, 4096), FcShape(1, 36, 5)):
        for d in (0.01, 0.1, 1.0):
            compute = d * shape.flops / (BASE.compute * BASE.spmv_eff)
            _, b, m, o = perfmodel.sparse_terms(shape, BASE)
            assert perfmodel.sparse_time(shape, d, BASE) == pytest.approx(max(compute, b + m * d) + o)
    a, _, m, _ = perfmodel.sparse_terms(FC, BASE)
    assert a == pytest.approx(FC.flops / (BASE.compute * perfmodel.sparse_efficiency(FC, BASE)) + m)


def test_inner_products_have_no_input_pass():
    costly = dataclasses.replace(BASE, dense_input_cost=1e-6, sparse_input_cost=1e-6)
    assert perfmodel.dense_time(FC, costly) == perfmodel.dense_time(FC, BASE)
    assert perfmodel.sparse_time(FC, 0.1, costly) == perfmodel.sparse_time(FC, 0.1, BASE)


def test_ccnmm_pays_its_gather():
    # every column kept: the dense product plus the gather of the lowered matrix and the bias pass
    oh, ow = CONV_1X1.out_hw
    extra = (8.0 * CONV_1X1.channels * oh * ow + 8.0 * CONV_1X1.outputs) / BASE.bandwidth
    assert perfmodel.ccnmm_time(CONV_1X1, 1.0, BASE) == pytest.approx(perfmodel.dense_time(CONV_1X1, BASE) + extra)
    # a 1x1 layer with a few all-zero columns (GoogLeNet's reductions at density 0.2) is not worth CCNMM...
    assert perfmodel.choose(CONV_1X1, 0.2, BASE, column_density=0.97) != "ccnmm"
    # ...a 3x3 layer with most columns zero (structured pruning) is
    slow_sparse = dataclasses.replace(BASE, sparse_eff=0.01)
    assert perfmodel.choose(CONV_3X3, 0.1, slow_sparse, column_density=0.1) == "ccnmm"


def test_fit_recovers_the_costs_that_made_the_times():
    rest = [1e-4, 3e-4, 2e-3, 5e-5, 8e-4]
    inputs = [92160, 18432, 55296, 5000, 200000]
    rows = [(r + 40e-6 + 0.3e-9 * i, r, i) for r, i in zip(rest, inputs)]
    overhead, per_input = net_costs.fit_fixed_costs(rows)
    assert overhead == pytest.approx(40e-6, rel=1e-6) and per_input == pytest.approx(0.3e-9, rel=1e-6)


def test_fit_never_returns_negative_costs():
    # times below what the rest of the model predicts: nothing is left to explain
    rows = [(0.9 * r, r, i) for r, i in ((1e-4, 1000), (2e-4, 5000), (4e-4, 90000))]
    assert net_costs.fit_fixed_costs(rows) == (0.0, 0.0)
    # a constant excess only: no cost per input value
    rows = [(r + 30e-6, r, i) for r, i in ((1e-4, 1000), (2e-4, 5000), (4e-4, 90000))]
    overhead, per_input = net_costs.fit_fixed_costs(rows)
    assert overhead == pytest.approx(30e-6, rel=1e-6) and per_input == pytest.approx(0.0, abs=1e-15)


def test_fit_of_an_overhead_alone():
    rows = [(r + 25e-6, r) for r in (1e-5, 3e-4, 2e-3)]
    assert net_costs.fit_overhead(rows) == pytest.approx(25e-6, rel=1e-9)
    assert net_costs.fit_overhead([(0.5 * r, r) for r in (1e-5, 3e-4)]) == 0.0


def test_the_calibration_net_runs_the_mode_it_measures():
    built = {mode: Net(net_costs.chain_param(mode), caffe_pb2.TEST) for mode in ("dense", "sparse")}
    products = {}
    for mode, net in built.items():
        net.forward_prefilled()
        products[mode] = [layer for layer in net.layers if layer.type in ("Convolution", "InnerProduct")]
        assert len(products[mode]) == sum(step != "pool" for step in net_costs.CHAIN)
        assert [layer.type for layer in products[mode]][-2:] == ["InnerProduct", "InnerProduct"]
    assert all(layer.engine is None for layer in products["dense"])          # plain LOWERED_GEMM / GEMM
    assert {layer.engine.last_mode for layer in products["sparse"]} == {"sparse", "spmdm"}


def test_measured_costs_are_plausible():
    with using_threads(1):
        costs = net_costs.measure_net_costs(BASE, iterations=2)
    overheads = {f"{warm}{mode}_{kind}overhead" for warm in ("", "warm_") for mode in ("dense", "sparse")
                 for kind in ("", "fc_")}
    assert set(costs) == overheads | {"dense_input_cost", "sparse_input_cost"}
    for name, value in costs.items():
        assert math.isfinite(value) and value >= 0, name
    assert all(costs[name] < 0.01 for name in overheads)
    assert costs["dense_input_cost"] < 1e-6 and costs["sparse_input_cost"] < 1e-6


def test_inner_products_pay_their_own_call_overhead():
    fc_costs = dataclasses.replace(BASE, dense_fc_overhead=3e-6, sparse_fc_overhead=4e-6)
    for shape in (FcShape(1, 500, 10), FC):
        assert perfmodel.dense_time(shape, BASE) - perfmodel.dense_time(shape, fc_costs) == pytest.approx(
            BASE.dense_fc_overhead - 3e-6)
        assert perfmodel.sparse_time(shape, 0.1, BASE) - perfmodel.sparse_time(shape, 0.1, fc_costs) == \
            pytest.approx(BASE.sparse_fc_overhead - 4e-6)
    assert perfmodel.dense_time(CONV_3X3, fc_costs) == perfmodel.dense_time(CONV_3X3, BASE)


def test_a_small_net_prices_its_layers_between_warm_and_evicted():
    """in_net: a net moving f = B / EVICTED_BYTES of the calibration's eviction pays
    o_warm + f·(o - o_warm) per call and f·c per input value; a large net or an unknown one pays the
    evicted costs."""
    profile = dataclasses.replace(BASE, dense_input_cost=2e-9, sparse_input_cost=1e-9)
    quarter = perfmodel.in_net(profile, perfmodel.EVICTED_BYTES // 4)
    for name in ("dense_overhead", "sparse_overhead", "dense_fc_overhead", "sparse_fc_overhead"):
        warm, evicted = getattr(profile, f"warm_{name}"), getattr(profile, name)
        assert getattr(quarter, name) == pytest.approx(warm + 0.25 * (evicted - warm))
        assert getattr(perfmodel.in_net(profile, 0), name) == pytest.approx(warm)
    assert (quarter.dense_input_cost, quarter.sparse_input_cost) == pytest.approx((0.5e-9, 0.25e-9))
    assert perfmodel.in_net(profile, None) is profile
    assert perfmodel.in_net(profile, 10 * perfmodel.EVICTED_BYTES) is profile
    assert perfmodel.dense_time(CONV_1X1, quarter) < perfmodel.dense_time(CONV_1X1, profile)
