"""A sparse engine never runs stale weights (issue 11's repro): after any change of any weight bit,
through any array (one the user took earlier and kept, a view of a view, a memoryview, a shared
param, ``net.params[..][0].data[...] = w``, ``net.copy_from``), the next forward of DIRECT_SCONV,
LOWERED_CCNMM, AUTO and SPMDM, plain and fused, equals the dense mode's built from the same prototxt.
Changes that do not move the outputs (0.0 -> -0.0, a NaN's payload) are seen too: the engine repacks."""
import numpy as np
import pytest
from one_layer_nets import one_layer_param, with_dense_twin

import pyskim
from pyskim.proto import caffe_pb2
from pyskim.sparse.weights import BLOCK, WeightRecord

CONV = caffe_pb2.ConvolutionParameter
IP = caffe_pb2.InnerProductParameter
DENSITY = 0.1

CASES = {
    "conv DIRECT_SCONV": ("Convolution", CONV.DIRECT_SCONV, "sparse"),
    "conv LOWERED_CCNMM": ("Convolution", CONV.LOWERED_CCNMM, "ccnmm"),
    "conv AUTO": ("Convolution", CONV.AUTO, None),
    "ConvolutionReLU DIRECT_SCONV": ("ConvolutionReLU", CONV.DIRECT_SCONV, "sparse"),
    "ip SPMDM": ("InnerProduct", IP.SPMDM, "spmdm"),
    "ip transpose SPMDM": ("InnerProduct", IP.SPMDM, "spmdm"),
    "ip AUTO": ("InnerProduct", IP.AUTO, None),
    "InnerProductReLUDropout SPMDM": ("InnerProductReLUDropout", IP.SPMDM, "spmdm"),
}


pytestmark = pytest.mark.usefixtures("sparse_wins_profile")


def _param(case):
    """A net: Input ``x`` -> layer ``layer`` (the case's type and mode) -> ``y``."""
    type_name, mode, _ = CASES[case]
    return one_layer_param(case, type_name, mode)


def _nets(case):
    """(sparse net, dense net) of ``case`` with the same random pruned weights and input."""
    nets = with_dense_twin(_param(case), DENSITY)
    for net in nets:
        net.params["layer"][0].data.reshape(-1)[7] = 0.0   # index 7 starts at zero (outside any pattern)
    return nets


def _engine(net):
    layer = net.layer_dict["layer"]
    return (layer.stages[0] if hasattr(layer, "stages") else layer).engine


def _check(case, sparse, dense):
    """Forward both nets; the sparse one must equal the dense one and have run a sparse mode."""
    sparse.forward()
    dense.forward()
    got, ref = sparse.blobs["y"].data.astype(np.float64), dense.blobs["y"].data.astype(np.float64)
    scale = np.abs(ref[np.isfinite(ref)]).max(initial=0.0)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * scale + 1e-6, equal_nan=True, err_msg=case)
    expected = CASES[case][2]
    used = _engine(sparse).last_mode
    assert used == expected if expected else used != "dense", (case, used)


def _both(sparse, dense, edit):
    """Apply ``edit(weights array)`` to the layer's weights of both nets, each through a fresh array."""
    for net in (sparse, dense):
        edit(net.params["layer"][0].data)


@pytest.mark.parametrize("case", CASES)
def test_held_array_write_is_seen(case):
    """The issue's repro: a write through an array taken before the forward, to one weight."""
    sparse, dense = _nets(case)
    w = sparse.params["layer"][0].data                # held reference (net_surgery does this)
    _check(case, sparse, dense)
    w.reshape(-1)[7] += 3.0                           # a zero weight becomes nonzero
    dense.params["layer"][0].data.reshape(-1)[7] += 3.0
    _check(case, sparse, dense)
    middle = w.size // 2 + 1
    w.reshape(-1)[middle] -= 2.0                      # a weight in the middle
    dense.params["layer"][0].data.reshape(-1)[middle] -= 2.0
    _check(case, sparse, dense)
    nonzero = np.flatnonzero(w)[-1]
    w.reshape(-1)[nonzero] = 0.0                      # a nonzero weight pruned
    dense.params["layer"][0].data.reshape(-1)[nonzero] = 0.0
    _check(case, sparse, dense)


@pytest.mark.parametrize("case", CASES)
def test_write_then_drop_the_array_is_seen(case):
    """An array alive at one forward, written and dropped before the next: the next forward sees it."""
    sparse, dense = _nets(case)
    w = sparse.params["layer"][0].data
    _check(case, sparse, dense)
    w.reshape(-1)[11] = 5.0
    del w                                             # no hand-out of the sparse net's weights since
    dense.params["layer"][0].data.reshape(-1)[11] = 5.0
    _check(case, sparse, dense)


@pytest.mark.parametrize("case", ["conv DIRECT_SCONV", "ip SPMDM", "InnerProductReLUDropout SPMDM"])
def test_views_of_views_and_memoryviews_are_seen(case):
    sparse, dense = _nets(case)
    view = sparse.params["layer"][0].data.reshape(-1)[3:][::2]      # the hand-out itself is dropped
    _check(case, sparse, dense)
    view[5] = 4.0                                                    # weight 3 + 2 * 5
    dense.params["layer"][0].data.reshape(-1)[13] = 4.0
    _check(case, sparse, dense)
    buffer = memoryview(sparse.params["layer"][0].data)
    _check(case, sparse, dense)
    np.asarray(buffer).reshape(-1)[17] = -6.0
    dense.params["layer"][0].data.reshape(-1)[17] = -6.0
    del view, buffer
    _check(case, sparse, dense)


@pytest.mark.parametrize("case", ["conv DIRECT_SCONV", "ip SPMDM", "ConvolutionReLU DIRECT_SCONV"])
def test_assignment_and_copy_from_are_seen(case, tmp_path):
    sparse, dense = _nets(case)
    _check(case, sparse, dense)
    rng = np.random.default_rng(1)
    shape = sparse.params["layer"][0].data.shape
    new = rng.standard_normal(shape) * (rng.random(shape) < 0.3)
    _both(sparse, dense, lambda a: a.__setitem__(Ellipsis, new))       # net.params[..][0].data[...] = w
    _check(case, sparse, dense)
    dense.params["layer"][0].data[...] *= -0.5
    dense.save(str(tmp_path / "weights.caffemodel"))
    sparse.copy_from(str(tmp_path / "weights.caffemodel"))
    _check(case, sparse, dense)


def test_shared_weights_written_through_the_owner_are_seen():
    """Two sparse convolutions sharing one weight blob (``param { name: ... }``): a write through
    the first layer's array is seen by the second layer's engine."""
    param = caffe_pb2.NetParameter()
    param.layer.add(name="x", type="Input", top=["x"]).input_param.shape.add().dim.extend([1, 3, 8, 8])
    for name, bottom in (("a", "x"), ("b", "x")):
        lp = param.layer.add(name=name, type="Convolution", bottom=[bottom], top=[name])
        lp.param.add(name="shared")
        cp = lp.convolution_param
        cp.num_output, cp.conv_mode, cp.bias_term = 3, CONV.DIRECT_SCONV, False
        cp.kernel_size.append(3)
    net = pyskim.Net(param, pyskim.TEST)
    net.blobs["x"].data[...] = np.random.default_rng(2).standard_normal((1, 3, 8, 8))
    held = net.params["a"][0].data
    held[...] = 0
    net.forward()
    held[1, 2, 1, 1] = 1.5
    net.forward()
    np.testing.assert_array_equal(net.blobs["b"].data, net.blobs["a"].data)
    np.testing.assert_allclose(net.blobs["b"].data[0, 1], 1.5 * net.blobs["x"].data[0, 2, 1:7, 1:7], rtol=1e-6)
    assert np.count_nonzero(net.blobs["b"].data[0, [0, 2]]) == 0


@pytest.mark.parametrize("case", ["conv DIRECT_SCONV", "conv LOWERED_CCNMM", "ip SPMDM",
                                  "InnerProductReLUDropout SPMDM"])
def test_bit_changes_without_a_value_change_are_seen(case):
    """0.0 -> -0.0 and a NaN's payload change repack; unchanged weights and rewriting the same bits
    do not."""
    sparse, dense = _nets(case)
    w = sparse.params["layer"][0].data
    bits = w.reshape(-1).view(np.uint32)
    _check(case, sparse, dense)
    engine = _engine(sparse)
    packed = engine.repacks
    _check(case, sparse, dense)
    w[...] = w.copy()                                   # the same bits again
    _check(case, sparse, dense)
    assert engine.repacks == packed
    zero = int(np.flatnonzero(bits == 0)[0])
    w.reshape(-1)[zero] = -0.0
    _check(case, sparse, dense)
    assert engine.repacks == packed + 1
    bits[zero] = 0x7FC00001                            # a NaN
    sparse.forward()
    assert engine.repacks == packed + 2
    bits[zero] = 0x7FC00002                            # another NaN payload: still NaN, but new bits
    sparse.forward()
    assert engine.repacks == packed + 3


@pytest.mark.parametrize("case", ["conv DIRECT_SCONV", "ip SPMDM"])
def test_no_array_held_takes_the_fast_path(case):
    """With no writable array of the weights alive and none handed out, the engine skips the compare
    (its watch proves nothing changed) and does not repack."""
    sparse, dense = _nets(case)
    _check(case, sparse, dense)
    engine = _engine(sparse)
    blob = sparse.params["layer"][0]
    mark = blob.data_mark()
    assert mark.unshared and blob.data_untouched_since(mark)
    packed = engine.repacks
    for _ in range(3):
        sparse.forward()
    assert engine.repacks == packed and blob.data_untouched_since(mark)
    held = blob.data
    assert not blob.data_untouched_since(mark) and not blob.data_mark().unshared
    held.reshape(-1)[7] = 2.0
    dense.params["layer"][0].data.reshape(-1)[7] = 2.0
    _check(case, sparse, dense)
    assert engine.repacks == packed + 1


def test_readonly_data_cannot_be_made_writeable():
    blob = pyskim.Net(_param("conv DIRECT_SCONV"), pyskim.TEST).params["layer"][0]
    view = blob.readonly_data
    mark = blob.data_mark()
    for array in (view, view.reshape(-1)[2:], np.asarray(memoryview(view))):
        with pytest.raises(ValueError):
            array.flags.writeable = True
    assert mark.unshared and blob.data_untouched_since(mark)


@pytest.mark.parametrize("size", [1, 7, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 5])
@pytest.mark.parametrize("density", [0.0, 0.05, 0.6, 1.0])
def test_weight_record_sees_every_bit_it_should(size, density):
    """The record (sparse below ~2/3 nonzero words, a dense copy above) matches exactly the arrays with
    the same bits: any single flipped bit, -0.0 for 0.0 or a NaN is a mismatch, the same bits are not."""
    rng = np.random.default_rng(size)
    weights = (rng.standard_normal(size) * (rng.random(size) < density)).astype(np.float32)
    record = WeightRecord(weights)
    assert record.matches(weights.copy()) and not record.matches(weights.reshape(1, -1))
    assert record.nbytes <= weights.nbytes + 8 * (size // BLOCK + 2)
    for index in {0, size // 2, size - 1, min(BLOCK, size - 1)}:
        for bit in (0, 31, int(rng.integers(1, 31))):
            changed = weights.copy()
            changed.view(np.uint32)[index] ^= np.uint32(1 << bit)
            assert not record.matches(changed), (index, bit)
        for value in (0.0, -0.0, np.nan, 3.0):
            changed = weights.copy()
            changed[index] = value
            same = changed.view(np.uint32)[index] == weights.view(np.uint32)[index]
            assert record.matches(changed) == same, (index, value)
