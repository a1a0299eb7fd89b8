"""The sparse kernels (pyskim.sparse) against dense NumPy references, and their argument checking."""
import platform
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pyskim.kernels.dense as K
from pyskim._kernels import sparse_conv as _sc
from pyskim.kernels import sparse as sparse_kernels
from pyskim.kernels import sparse_reference as R
from pyskim.kernels.csr import (
    MAX_CACHED_PLANS,
    ConvCSR,
    FcCSR,
    conv_out_hw,
    conv_out_size,
    pack_conv_weights,
    pack_fc_weights,
)
from pyskim.kernels.sparse import (
    FC_PARALLEL_MIN_WORK,
    choose_conv_blocking,
    runs_by_image,
    sparse_conv_forward,
    sparse_fc_forward,
)

RNG = np.random.default_rng(2024)
DENSITIES = [1.0, 0.5, 0.1, 0.01, 0.0]


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def pruned(shape, density, rng=RNG):
    w = rng.standard_normal(shape).astype(np.float32)
    return w * (rng.random(shape) < density)


def assert_close(y, ref):
    assert y.dtype == np.float32 and y.shape == ref.shape
    scale = max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * scale)


def run_conv(n, c, hw, oc, kernel, stride, pad, dil, groups, density, relu=False, bias=True, rng=RNG,
             blocking=None):
    kh, kw = (kernel, kernel) if np.isscalar(kernel) else kernel
    x = rng.standard_normal((n, c) + hw).astype(np.float32)
    w = pruned((oc, c // groups, kh, kw), density, rng)
    b = rng.standard_normal(oc).astype(np.float32) if bias else None
    csr = pack_conv_weights(w, groups, hw, pad, dil)
    ohw = conv_out_hw(hw, (kh, kw), pad, stride, dil)
    y = sparse_conv_forward(x, csr, b, stride, pad, dil, ohw, relu=relu, blocking=blocking)
    ref = R.conv_forward_dense_ref(x, w, b, stride, pad, dil, groups, relu=relu)
    return x, w, b, csr, y, ref


# (N, C, (H, W), OC, kernel, stride, pad, dilation, groups)
GEOMETRIES = [
    (2, 8, (7, 7), 16, 1, 1, 0, 1, 1),                  # 1x1
    (1, 16, (13, 13), 24, 3, 1, 1, 1, 1),               # 3x3, AlexNet conv3-like
    (3, 12, (15, 15), 20, 5, 1, 2, 1, 2),               # 5x5, pad 2, groups 2, batch 3
    (1, 3, (39, 39), 8, 11, 4, 0, 1, 1),                # 11x11 stride 4 (conv1-like)
    (2, 6, (9, 11), 8, (1, 3), 1, (0, 1), 1, 1),        # rectangular 1x3
    (1, 5, (10, 7), 6, (3, 1), 1, (1, 0), 1, 1),        # rectangular 3x1
    (1, 8, (16, 17), 12, 3, 2, 1, 1, 1),                # stride 2
    (2, 4, (19, 14), 6, 4, 3, 2, 1, 2),                 # stride 3, even kernel
    (1, 6, (15, 13), 8, 3, 1, 2, 2, 1),                 # dilation 2
    (2, 8, (11, 11), 8, 3, 1, 1, 1, 8),                 # depthwise
    (1, 6, (9, 9), 12, 3, 2, 1, 1, 6),                  # depthwise, multiplier 2, stride 2
    (1, 3, (61, 47), 4, 3, 1, 1, 1, 1),                 # many register tiles, odd sizes
    (3, 4, (17, 23), 6, (2, 5), (2, 3), (1, 2), (2, 1), 2),  # everything asymmetric
    (1, 4, (5, 6), 3, (5, 6), 1, 0, 1, 1),              # kernel = whole image -> 1x1 output
    (2, 2, (3, 4), 3, 4, 1, 2, 1, 1),                   # kernel larger than the image
    (1, 3, (1, 1), 5, 1, 1, 0, 1, 1),                   # 1x1 image
    (1, 24, (27, 27), 32, 5, 1, 2, 1, 2),               # conv2-like
    (1, 2, (6, 150), 3, 3, (1, 4), (1, 5), 1, 1),       # stride 4, rows of several vectors, pad > stride
    (2, 2, (5, 75), 3, 3, 2, 1, 1, 1),                  # stride 2, rows of several vectors
    (1, 2, (5, 90), 3, 5, 5, 3, 1, 1),                  # stride 5, rows of several vectors
    (1, 1, (5, 3), 1, 3, 1, (0, 1), 2, 1),              # dilated kernel as tall as the padded input
]


@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("geom", GEOMETRIES)
def test_sparse_conv_matches_dense(geom, density):
    *_, csr, y, ref = run_conv(*geom, density)
    assert_close(y, ref)
    if density == 0.0:      # all-zero layer: bias only
        assert csr.nnz == 0
        np.testing.assert_array_equal(y, np.broadcast_to(ref, y.shape).astype(np.float32))


@pytest.mark.parametrize("width", [7, 16, 17, 33])
@pytest.mark.parametrize("layout", [{"interleave_min": 17}, {"interleave_min": 1}])
def test_fused_relu_keeps_nan_and_negative_zero(width, layout):
    """Caffe's ReLU is ``x < 0 ? 0 : x`` per element (max(x, 0) + slope * min(x, 0)): a NaN output stays
    NaN and -0 stays -0, at every position of rows of any length and in both layouts."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((16, 4, 5, width)).astype(np.float32)
    w = pruned((6, 4, 3, 3), 0.5, rng)
    w[1] = 0.0                          # channel 1: the bias alone
    b = rng.standard_normal(6).astype(np.float32)
    b[0], b[1] = np.nan, -0.0
    csr = pack_conv_weights(w, 1, (5, width), (1, 1), (1, 1))
    y = sparse_conv_forward(x, csr, b, 1, 1, 1, (5, width), relu=True, blocking=layout)
    assert np.isnan(y[:, 0]).all()
    assert (y[:, 1] == 0).all() and np.signbit(y[:, 1]).all()
    ref = R.conv_forward_dense_ref(x, w, b, 1, 1, 1, 1, relu=False)[:, 2:]
    assert_close(y[:, 2:], np.where(ref < 0, np.float32(0), ref))


@pytest.mark.parametrize("geom", GEOMETRIES[:4] + GEOMETRIES[7:9])
def test_fused_relu_and_no_bias(geom):
    *_, y, ref = run_conv(*geom, 0.3, relu=True)
    assert_close(y, ref)
    assert (y >= 0).all()
    *_, y, ref = run_conv(*geom, 0.3, bias=False)
    assert_close(y, ref)


@pytest.mark.parametrize("geom", GEOMETRIES[:2] + GEOMETRIES[6:9] + GEOMETRIES[12:13])
def test_reference_of_the_packed_format(geom):
    x, w, b, csr, _y, ref = run_conv(*geom, 0.4)
    stride = geom[5]
    np.testing.assert_allclose(R.sparse_conv_forward_ref(x, csr, b, stride), ref, rtol=1e-10, atol=1e-9)
    np.testing.assert_array_equal(R.unpack_conv_weights(csr), w)


def test_pack_conv_weights_format():
    w = np.zeros((4, 3, 3, 2), np.float32)
    w[0, 1, 2, 1] = 1.5
    w[0, 0, 0, 0] = -2.0
    w[3, 2, 1, 0] = 0.25
    w[2, 0, 0, 1] = -0.0                         # negative zero is dropped
    csr = pack_conv_weights(w, 2, (5, 6), (1, 2), (2, 3))
    hp, wp = 5 + 2, 6 + 4
    assert csr.padded_hw == (hp, wp) and csr.nnz == 3
    assert csr.density == pytest.approx(3 / w.size)
    np.testing.assert_array_equal(csr.rowptr, [0, 2, 2, 2, 3])
    np.testing.assert_array_equal(csr.colidx, [0, (1 * hp + 2 * 2) * wp + 1 * 3, (2 * hp + 1 * 2) * wp])
    np.testing.assert_array_equal(csr.values, [-2.0, 1.5, 0.25])
    assert csr.rowptr.dtype == np.int32 and csr.colidx.dtype == np.int32 and csr.values.dtype == np.float32
    with pytest.raises(ValueError):
        csr.values[0] = 1.0                       # read-only
    rp, col, val = csr.group(1)
    np.testing.assert_array_equal(rp, [0, 0, 1])
    np.testing.assert_array_equal(col, [(2 * hp + 1 * 2) * wp])
    np.testing.assert_array_equal(val, [0.25])
    assert "nnz=3" in repr(csr)
    assert isinstance(csr, ConvCSR)


def test_geometry_helpers():
    assert conv_out_size(227, 11, 0, 4, 1) == 55
    assert conv_out_size(13, 3, 1, 1, 1) == 13
    assert conv_out_hw((27, 27), 5, 2) == (27, 27)
    assert conv_out_hw((10, 9), (3, 2), (1, 0), (2, 3), (2, 1)) == (4, 3)
    with pytest.raises(ValueError):
        conv_out_hw((3, 3), 5)
    for bad in [((0, 3), 1), ((3, 3), 0), ((3, 3), (1, 2, 3)), ((3, 3), True), ((3, 3), 1.5)]:
        with pytest.raises(ValueError):
            conv_out_hw(*bad)


@pytest.mark.parametrize("blocking", [
    {"tile": 1, "icb": 1, "ocb": 1, "itile": 1, "iicb": 1, "iocb": 1},
    {"tile": 2, "icb": 3, "ocb": 5, "itile": 3, "iicb": 2, "iocb": 4, "interleave_min": 1},
    {"tile": None, "icb": 1, "interleave_min": 17},
    {"tile": 1000, "icb": 1000, "ocb": 1000, "itile": 1000, "iicb": 1000, "iocb": 1000},
])
def test_blocking_does_not_change_results(blocking):
    x = rand(19, 10, 14, 13)
    w = pruned((12, 5, 3, 3), 0.3)
    b = rand(12)
    csr = pack_conv_weights(w, 2, (14, 13), 1, 1)
    for stride in (1, 2):
        ohw = conv_out_hw((14, 13), 3, 1, stride, 1)
        ref = R.conv_forward_dense_ref(x, w, b, stride, 1, 1, 2, relu=True)
        for n in (1, 3, 16, 19):
            y = sparse_conv_forward(x[:n], csr, b, stride, 1, 1, ohw, relu=True, blocking=blocking)
            assert_close(y, ref[:n])


def test_output_channel_blocks_share_out_evenly():
    """The spatial variant's work items hold 64 output channels where the threads still get even
    shares of one image's items, else 32 or 16. A 6x6 plane is 3 vectors: one register tile on
    every ISA (28 vectors with AVX-512, 6 with AVX2, 3 without), so one image has one item per block."""
    def ocb(num_output, threads, hw=6):
        csr = pack_conv_weights(pruned((num_output, 8, 3, 3), 0.3), 1, (hw, hw), 1, 1)
        return choose_conv_blocking(csr, (1, 1), (hw, hw), threads)["ocb"]
    assert ocb(384, 1) == ocb(384, 2) == ocb(208, 1) == 64
    assert ocb(208, 2) == 32          # 64-channel items: 3 against 1 on two threads (the last holds 16)
    assert ocb(64, 2) == 32 and ocb(16, 2) == 16 and ocb(8, 1) == 8
    assert ocb(48, 2) == 16           # no block shares 48 channels evenly: the smallest
    # a forced block still wins
    csr = pack_conv_weights(pruned((384, 8, 3, 3), 0.3), 1, (13, 13), 1, 1)
    assert choose_conv_blocking(csr, (1, 1), (13, 13), 1, ocb=16)["ocb"] == 16


@pytest.mark.parametrize("aligned", [0, 1])
@pytest.mark.parametrize("geom", GEOMETRIES)
def test_aligned_and_plain_layouts(geom, aligned):
    """Both prepared layouts, whatever the default for the geometry: shifted copies with rows of whole
    vectors (aligned loads) and the single tight copy; with the interleaved variant beside them."""
    *_, y, ref = run_conv(*geom, 0.3, relu=True, blocking={"aligned": aligned})
    assert_close(y, ref)
    _, *rest = geom
    *_, y, ref = run_conv(17, *rest, 0.3, blocking={"aligned": aligned, "interleave_min": 1})
    assert_close(y, ref)


@pytest.mark.parametrize("geom", GEOMETRIES)
def test_batch_interleaved_variant(geom):
    """Batches of 16 and more run 16 images per vector; a remainder of >= 12 too, else one by one."""
    _, *rest = geom
    for batch, density in ((16, 0.3), (27, 1.0), (30, 0.6)):
        # the interleaved variant is the default from density 0.5 on (in the aligned variant's place)
        blocking = None if density == 1.0 else {"interleave_min": 12}
        *_, csr, y, ref = run_conv(batch, *rest, density, relu=batch == 27, blocking=blocking)
        assert_close(y, ref)
        (plan,) = csr.cached_plans()
        assert plan.split(batch) == ((16, batch - 16) if batch == 27 else (batch, 0))


@pytest.mark.parametrize("itile", [1, 5, 16, 28])
@pytest.mark.parametrize("geom", [GEOMETRIES[i] for i in (1, 6, 7, 17)])
def test_interleaved_tiles_of_rows_and_chunks(geom, itile):
    """The batch-interleaved layout's conversions (16 x 16 transposes in registers): tiles of whole rows,
    whose 16-position pieces cross rows and the thrown-away positions between them, tiles of row
    chunks, and a group of 5 images (21 in all) after a full one; ReLU on the way out."""
    _, *rest = geom
    *_, y, ref = run_conv(21, *rest, 0.3, relu=True, blocking={"interleave_min": 1, "itile": itile})
    assert_close(y, ref)


def test_plan_cache_is_bounded():
    csr = pack_conv_weights(pruned((4, 2, 3, 3), 0.5), 1, (6, 6), 1, 1)
    built = []
    for key in range(MAX_CACHED_PLANS):
        csr.plan(key, lambda: built.append(object()) or built[-1])
    assert csr.plan(0, lambda: pytest.fail("a cached plan is built again")) is built[0]
    assert len(csr.cached_plans()) == MAX_CACHED_PLANS
    csr.plan("one more", object)                     # a full cache is emptied first
    assert len(csr.cached_plans()) == 1


@pytest.mark.parametrize("batch", [8, 9, 11])
@pytest.mark.parametrize("stride, group", [(1, 1), (2, 2)])
def test_batches_image_by_image_on_two_threads(batch, stride, group):
    """On two threads a batch of 8 or more images that shares out evenly runs one image per task (each
    thread prepares the image it convolves): every image equals the same image run alone, bit for
    bit, and the dense reference; 9 images (5 against 4) run in passes, with the same results."""
    x = rand(batch, 8, 11, 11)
    w = pruned((12, 8 // group, 3, 3), 0.3)
    b = rand(12)
    csr = pack_conv_weights(w, group, (11, 11), 1, 1)
    out_hw = conv_out_hw((11, 11), 3, 1, stride)
    before = K.get_num_threads()
    try:
        K.set_num_threads(2)
        y = sparse_conv_forward(x, csr, b, stride, 1, 1, out_hw, relu=True)
        alone = np.concatenate([sparse_conv_forward(x[i:i + 1], csr, b, stride, 1, 1, out_hw, relu=True)
                                for i in range(batch)])
    finally:
        K.set_num_threads(before)
    np.testing.assert_array_equal(y, alone)
    assert_close(y, np.maximum(R.conv_forward_dense_ref(x, w, b, stride, 1, 1, group), 0))


def test_which_batches_run_image_by_image():
    """Several threads, at least 4 images per thread, shared out within 10% of evenly."""
    assert not any(runs_by_image(n, 1) for n in range(1, 40))
    assert [n for n in range(1, 20) if runs_by_image(n, 2)] == [8] + list(range(10, 20))   # 9: 5 against 4
    assert not runs_by_image(1, 2) and runs_by_image(64, 4) and not runs_by_image(13, 4)


@pytest.mark.parametrize("split_loads_cost", [True, False])
def test_image_by_image_plans_on_several_threads_are_aligned(monkeypatch, split_loads_cost):
    """Threads that each run whole images read the prepared input one block at a time: their plans
    take the aligned layout where one thread's would; threads sharing an image's items do not. On a
    CPU whose loads across cache lines are cheap (AMD's Zen) no plan is aligned."""
    monkeypatch.setattr(sparse_kernels, "SPLIT_LOADS_COST", split_loads_cost)
    csr = pack_conv_weights(pruned((64, 32, 3, 3), 0.1), 1, (13, 13), 1, 1)
    assert choose_conv_blocking(csr, (1, 1), (13, 13), 1)["aligned"] == int(split_loads_cost)
    assert choose_conv_blocking(csr, (1, 1), (13, 13), 2, by_image=True)["aligned"] == int(split_loads_cost)
    assert choose_conv_blocking(csr, (1, 1), (13, 13), 2)["aligned"] == 0
    assert choose_conv_blocking(csr, (1, 1), (13, 13), 2, aligned=1)["aligned"] == 1     # a forced layout


def test_split_loads_cost_follows_the_cpu_vendor():
    """The kernel asks the CPU itself (cpuid); the OS names the same vendor (/proc/cpuinfo's vendor_id,
    else the platform's processor string). No vendor named (another architecture): no split-load cost."""
    try:
        with open("/proc/cpuinfo") as f:
            vendor = next((line.split(":", 1)[1].strip() for line in f if line.startswith("vendor_id")), "")
    except OSError:
        vendor = platform.processor()
    assert sparse_kernels.SPLIT_LOADS_COST == ("GenuineIntel" in vendor or vendor.startswith("Intel"))


@pytest.mark.parametrize("threads, batch", [(2, 8), (2, 11), (3, 12)])
@pytest.mark.parametrize("stride, group, aligned", [(1, 1, 0), (1, 1, 1), (2, 1, 0), (1, 2, 0), (1, 2, 1)])
@pytest.mark.parametrize("icb", [1, 2, 5])
def test_image_by_image_block_by_block_on_a_dirty_buffer(threads, batch, stride, group, aligned, icb):
    """A batch run image by image prepares each image one input-channel block at a time, into a buffer
    that holds whatever it held before (here NaN). With one-sided padding (row pitch narrower than
    the padded row) a channel's last rows read the next channel's left zero columns, so every output
    is right only if that channel is ready before the block that reads it."""
    x = rand(batch, 10, 9, 9).astype(np.float32)
    w = pruned((12, 10 // group, 3, 3), 0.4)
    b = rand(12).astype(np.float32)
    csr = pack_conv_weights(w, group, (9, 9), 1, 1)
    out_hw = conv_out_hw((9, 9), 3, 1, stride)
    ref = np.maximum(R.conv_forward_dense_ref(x, w, b, stride, 1, 1, group), 0)
    before = K.get_num_threads()
    try:
        K.set_num_threads(threads)
        assert runs_by_image(batch, threads)
        sparse_conv_forward(x, csr, b, stride, 1, 1, out_hw, relu=True, blocking={"icb": icb, "aligned": aligned})
        (plan,) = csr.cached_plans()
        assert plan.icb == icb and plan.copies == (3 if aligned else 1)
        assert aligned or stride > 1 or plan.wq < 9 + 2      # one-sided padding
        out = np.empty(ref.shape, np.float32)
        plan.forward(x, np.full(plan.buffer_size(batch, threads), np.nan, np.float32), b, out, True, threads)
    finally:
        K.set_num_threads(before)
    assert_close(out, ref)


def test_image_by_image_with_more_accumulators_than_a_thread_keeps():
    """An image whose accumulators exceed the 1 MiB a worker keeps (128 output channels of 48x48: about
    1.2 MiB) runs its work items in runs, each over every input-channel block; the first run
    prepares the blocks, into a buffer that held NaN."""
    x = rand(8, 6, 48, 48).astype(np.float32)
    w = pruned((128, 6, 3, 3), 0.3)
    b = rand(128).astype(np.float32)
    csr = pack_conv_weights(w, 1, (48, 48), 1, 1)
    ref = np.maximum(R.conv_forward_dense_ref(x, w, b, 1, 1, 1, 1), 0)
    before = K.get_num_threads()
    try:
        K.set_num_threads(2)
        sparse_conv_forward(x, csr, b, 1, 1, 1, (48, 48), relu=True, blocking={"icb": 2, "ocb": 64})
        (plan,) = csr.cached_plans()
        vectors = -(-(47 * plan.wq + 48) // 16)
        assert 128 * vectors * 16 * 4 > 1 << 20 and plan.nblocks == 3
        out = np.empty(ref.shape, np.float32)
        plan.forward(x, np.full(plan.buffer_size(8, 2), np.nan, np.float32), b, out, True, 2)
    finally:
        K.set_num_threads(before)
    assert_close(out, ref)


def test_threads_buffers_and_out():
    x = rand(3, 16, 12, 12)
    w = pruned((32, 16, 3, 3), 0.2)
    b = rand(32)
    csr = pack_conv_weights(w, 1, (12, 12), 1, 1)
    before = K.get_num_threads()
    try:
        K.set_num_threads(1)
        y1 = sparse_conv_forward(x, csr, b, 1, 1, 1, (12, 12))
        K.set_num_threads(2)
        y2 = sparse_conv_forward(x, csr, b, 1, 1, 1, (12, 12))
    finally:
        K.set_num_threads(before)
    np.testing.assert_array_equal(y1, y2)           # each output is summed by one thread
    out = np.full_like(y1, np.nan)
    assert sparse_conv_forward(x, csr, b, 1, 1, 1, (12, 12), out=out) is out
    np.testing.assert_array_equal(out, y1)
    # the cached input buffer follows the batch size; a float64 input is converted
    np.testing.assert_array_equal(sparse_conv_forward(x[:1].astype(np.float64), csr, b, 1, 1, 1, (12, 12)),
                                  y1[:1])
    csr.clear_cache()
    assert csr.buffer_size == 0 and not csr.cached_plans()
    np.testing.assert_array_equal(sparse_conv_forward(x, csr, b, 1, 1, 1, (12, 12)), y1)
    # concurrent calls on one ConvCSR (one of them gets a private buffer)
    results = [None] * 4

    def work(i):
        results[i] = sparse_conv_forward(x, csr, b, 1 + i % 2, 1, 1, conv_out_hw((12, 12), 3, 1, 1 + i % 2))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, r in enumerate(results):
        assert_close(r, R.conv_forward_dense_ref(x, w, b, 1 + i % 2, 1, 1, 1))


# -- fully connected ----------------------------------------------------------------------------------

@pytest.mark.parametrize("m", [1, 3, 16, 37, 200])
@pytest.mark.parametrize("density", [1.0, 0.1, 0.0])
def test_sparse_fc_matches_dense(m, density):
    x = rand(m, 301)
    w = pruned((45, 301), density)
    b = rand(45)
    fc = pack_fc_weights(w)
    assert isinstance(fc, FcCSR) and fc.nnz == np.count_nonzero(w)
    np.testing.assert_array_equal(R.unpack_fc_weights(fc), w)
    for relu in (False, True):
        assert_close(sparse_fc_forward(x, fc, b, relu=relu), R.fc_forward_ref(x, w, b, relu))
    assert_close(sparse_fc_forward(x, fc, None), R.fc_forward_ref(x, w, None))
    out = np.empty((m, 45), np.float32)
    assert sparse_fc_forward(x, fc, b, out=out) is out


@pytest.mark.parametrize("m", [1, 16, 20, 40, 64, 140])
@pytest.mark.parametrize("num_input", [300, 65537])
def test_sparse_fc_rows_of_every_length(num_input, m):
    """Rows of 0 to 70 nonzeros, each against the dense result (16-bit and 32-bit column indices).
    Batch 1 runs one dot product per output over 32 nonzeros at a time plus a tail of 16 or fewer;
    larger batches run 16 nonzeros at a time plus a tail, spread over up to four sets of
    accumulators depending on the tile's width (1, 2, 3, 4 and 8 vectors of batch columns, and a
    second pass of tiles at 140)."""
    rng = np.random.default_rng(4)
    w = np.zeros((71, num_input), np.float32)
    for row in range(71):
        w[row, rng.choice(num_input, row, replace=False)] = rng.standard_normal(row)
    fc = pack_fc_weights(w)
    x = rng.standard_normal((m, num_input)).astype(np.float32)
    b = rng.standard_normal(71).astype(np.float32)
    for relu in (False, True):
        assert_close(sparse_fc_forward(x, fc, b, relu=relu), R.fc_forward_ref(x, w, b, relu))


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("m, num_input, density", [(16, 1031, 0.1), (40, 600, 0.2), (16, 800, 0.02)])
def test_sparse_fc_on_several_threads(threads, m, num_input, density):
    """Batched products of at least FC_PARALLEL_MIN_WORK multiply-adds share their outputs out in tasks
    of 64 (the input transposed once, on the calling thread); smaller ones (the last case) run on one
    thread. Either way every output equals the dense result."""
    w = pruned((700, num_input), density)
    fc = pack_fc_weights(w)
    parallel = fc.nnz * -(-m // 16) * 16 >= FC_PARALLEL_MIN_WORK
    assert parallel == (density >= 0.1)
    x, b = rand(m, num_input), rand(700)
    before = K.get_num_threads()
    try:
        K.set_num_threads(threads)
        for relu in (False, True):
            assert_close(sparse_fc_forward(x, fc, b, relu=relu), R.fc_forward_ref(x, w, b, relu))
    finally:
        K.set_num_threads(before)


@pytest.mark.parametrize("num_input", [65536, 65537])
def test_sparse_fc_column_index_widths(num_input):
    """Inputs up to 65536 keep 16-bit column indices (the last column included), wider ones 32-bit;
    both give the dense result at batch 1 (SpMV) and batch > 1."""
    rng = np.random.default_rng(3)
    w = np.zeros((5, num_input), np.float32)
    w[:, [0, 1, 777, num_input - 2, num_input - 1]] = rng.standard_normal((5, 5))
    w[2, rng.choice(num_input, 200, replace=False)] = rng.standard_normal(200)
    fc = pack_fc_weights(w)
    for m in (1, 3):
        x = rng.standard_normal((m, num_input)).astype(np.float32)
        assert_close(sparse_fc_forward(x, fc, None), R.fc_forward_ref(x, w, None))
    assert _sc.FcPlan(fc.rowptr, fc.colidx, fc.values, 5, num_input).index_bytes == (2 if num_input <= 65536 else 4)


# -- argument checking --------------------------------------------------------------------------------

def _conv_setup():
    x = rand(2, 4, 9, 8)
    w = pruned((6, 2, 3, 3), 0.5)
    return x, w, rand(6), pack_conv_weights(w, 2, (9, 8), 1, 1)


@pytest.mark.parametrize("change", [
    {"x": np.zeros((2, 4, 9, 8), np.complex64)},
    {"x": np.array([["a"]])},
    {"x": np.zeros((4, 9, 8), np.float32)},
    {"x": np.zeros((2, 5, 9, 8), np.float32)},
    {"x": np.zeros((2, 4, 9, 9), np.float32)},
    {"x": np.zeros((0, 4, 9, 8), np.float32)},
    {"csr": "not packed"},
    {"bias": np.zeros(5, np.float32)},
    {"bias": np.zeros((6, 1), np.float32)},
    {"stride": 0}, {"stride": -1}, {"stride": (1, 2, 3)}, {"stride": 1.0},
    {"pad": 0}, {"pad": -1}, {"dilation": 2}, {"dilation": 0},
    {"out_hw": (9, 7)}, {"out_hw": (0, 8)},
    {"relu": 1}, {"out": np.empty((2, 6, 9, 8), np.float64)},
    {"out": np.empty((2, 6, 8, 9), np.float32)},
    {"out": np.empty((2, 6, 9, 16), np.float32)[..., ::2]},
    {"out": [[0.0]]},
    {"blocking": {"tile": 0}}, {"blocking": {"tyle": 1}}, {"blocking": (1, 1, 1)},
    {"blocking": {"icb": 1.5}},
])
def test_conv_argument_errors(change):
    x, _, b, csr = _conv_setup()
    args = {"x": x, "csr": csr, "bias": b, "stride": 1, "pad": 1, "dilation": 1, "out_hw": (9, 8)}
    args.update(change)
    extra = {k: args.pop(k) for k in ("relu", "out", "blocking") if k in args}
    with pytest.raises(ValueError):
        sparse_conv_forward(args["x"], args["csr"], args["bias"], args["stride"], args["pad"],
                            args["dilation"], args["out_hw"], **extra)


def test_conv_out_must_not_overlap_input():
    x, _, b, csr = _conv_setup()
    big = np.zeros((2, 6, 9, 8), np.float32)
    x = big.reshape(-1)[:x.size].reshape(x.shape)          # a contiguous view into out
    with pytest.raises(ValueError):
        sparse_conv_forward(x, csr, b, 1, 1, 1, (9, 8), out=big)


@pytest.mark.parametrize("args", [
    (np.zeros((4, 2, 3), np.float32), 1, (5, 5)),        # not 4-D
    (np.zeros((4, 2, 3, 3), np.complex64), 1, (5, 5)),
    (np.zeros((5, 2, 3, 3), np.float32), 2, (5, 5)),     # OC not divisible by groups
    (np.zeros((4, 2, 3, 3), np.float32), 0, (5, 5)),
    (np.zeros((4, 2, 3, 3), np.float32), 1.5, (5, 5)),
    (np.zeros((4, 2, 3, 3), np.float32), 1, (0, 5)),
    (np.zeros((4, 2, 7, 3), np.float32), 1, (5, 5)),     # kernel taller than the padded input
    (np.zeros((0, 2, 3, 3), np.float32), 1, (5, 5)),
])
def test_pack_conv_errors(args):
    with pytest.raises(ValueError):
        pack_conv_weights(*args)
    with pytest.raises(ValueError):
        pack_conv_weights(np.zeros((4, 2, 3, 3), np.float32), 1, (5, 5), pad=-1)
    with pytest.raises(ValueError):
        pack_conv_weights(np.zeros((4, 2, 3, 3), np.float32), 1, (5, 5), dilation=(1, 9))


def test_fc_argument_errors():
    fc = pack_fc_weights(pruned((7, 10), 0.5))
    x = rand(3, 10)
    for bad in [{"x": rand(3, 11)}, {"x": rand(10)}, {"x": np.zeros((0, 10), np.float32)},
                {"x": np.zeros((3, 10), np.complex64)}, {"fc": "no"}, {"bias": rand(6)},
                {"relu": "yes"}, {"out": np.empty((3, 7), np.float64)},
                {"out": np.empty((7, 3), np.float32)}]:
        args = {"x": x, "fc": fc, "bias": rand(7)}
        args.update(bad)
        extra = {k: args.pop(k) for k in ("relu", "out") if k in args}
        with pytest.raises(ValueError):
            sparse_fc_forward(args["x"], args["fc"], args["bias"], **extra)
    for bad in [np.zeros((3,), np.float32), np.zeros((3, 4), np.complex64), np.zeros((0, 4), np.float32)]:
        with pytest.raises(ValueError):
            pack_fc_weights(bad)


def test_compiled_plans_validate_their_arrays():
    def plan(rowptr, col, val, **kw):
        geo = {"groups": 1, "ocg": 2, "channels": 2, "height": 4, "width": 4, "pad_h": 1, "pad_w": 1,
               "stride_h": 1, "stride_w": 1, "out_h": 4, "out_w": 4, "icb": 1, "tile": 4, "ocb": 2}
        geo.update(kw)
        return _sc.ConvPlan(np.asarray(rowptr, np.int32), np.asarray(col, np.int32),
                            np.asarray(val, np.float32), **geo)

    p = plan([0, 1, 2], [0, 40], [1.0, 2.0])
    assert p.nnz == 2 and p.nblocks == 2
    assert plan([0, 1, 2], [0, 100], [1.0, 2.0], shifts=(0, 3)).copies == 2
    for bad in [{"rowptr": [0, 2, 1]}, {"rowptr": [1, 1, 2]}, {"rowptr": [0, 1]},
                {"col": [0, 72]}, {"col": [-1, 3]}, {"val": [1.0]},
                {"rowptr": [0, 2, 2], "col": [40, 3]}, {"out_h": 7}, {"stride_h": 0}, {"tile": 0},
                {"shifts": (1, 0)}, {"shifts": (0, 0)}, {"shifts": (0, 16)}, {"shifts": ()},
                {"shifts": (0, 3), "col": [0, 144]}, {"shifts": (0, 3), "il_min": 1}, {"pitch": 22}]:
        args = {"rowptr": [0, 1, 2], "col": [0, 40], "val": [1.0, 2.0]}
        geo = {k: bad.pop(k) for k in list(bad) if k not in args}
        args.update(bad)
        with pytest.raises(ValueError):
            plan(args["rowptr"], args["col"], args["val"], **geo)
    x = np.zeros((1, 2, 4, 4), np.float32)
    out = np.zeros((1, 2, 4, 4), np.float32)
    with pytest.raises(ValueError):      # buffer too small
        p.forward(x, np.zeros(p.buffer_size(1) - 1, np.float32), None, out, False, 1)
    with pytest.raises(ValueError):
        p.forward(np.zeros((1, 2, 4, 5), np.float32), np.zeros(p.buffer_size(1), np.float32), None,
                  out, False, 1)
    with pytest.raises(ValueError):
        p.forward(x, np.zeros(p.buffer_size(1), np.float32), np.zeros(3, np.float32), out, False, 1)
    with pytest.raises(ValueError):
        _sc.FcPlan(np.array([0, 1], np.int32), np.array([5], np.int32), np.ones(1, np.float32), 1, 5)


# -- property tests -----------------------------------------------------------------------------------

@st.composite
def conv_cases(draw):
    groups = draw(st.integers(1, 3))
    icg, ocg = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 20))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 40))
    n = draw(st.integers(1, 2))
    density = draw(st.sampled_from([0.0, 0.15, 0.5, 1.0]))
    relu = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    return (n, icg * groups, (h, w), ocg * groups, (kh, kw), (sh, sw), (ph, pw), (dh, dw), groups,
            density, relu, seed)


@settings(max_examples=60, deadline=None)
@given(conv_cases())
def test_property_sparse_conv_matches_dense(case):
    *geom, density, relu, seed = case
    *_, y, ref = run_conv(*geom, density, relu=relu, rng=np.random.default_rng(seed))
    assert_close(y, ref)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(1, 70), st.integers(1, 30), st.sampled_from([0.0, 0.2, 1.0]),
       st.booleans(), st.integers(0, 2**31 - 1))
def test_property_sparse_fc_matches_dense(m, k, n, density, relu, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = pruned((n, k), density, rng)
    b = rng.standard_normal(n).astype(np.float32)
    assert_close(sparse_fc_forward(x, pack_fc_weights(w), b, relu=relu), R.fc_forward_ref(x, w, b, relu))
