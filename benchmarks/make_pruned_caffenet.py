"""Write a CaffeNet caffemodel with SkimCaffe's published densities (random weights, random patterns).

    python benchmarks/make_pruned_caffenet.py OUT.caffemodel [--seed 0] [--model prototxt/caffenet/deploy.prototxt]

SkimCaffe's pruned CaffeNet (README: top-1 0.57478) keeps conv2 14.4%, conv3 6.9%, conv4 8.2%,
conv5 11.5%, fc6 9.7%, fc7 15.6% and fc8 26.2% of the weights nonzero; conv1 stays dense. The real
model is not available here, so this writes random weights with those exact nonzero counts at
uniformly random positions: He-scaled Gaussians (std = sqrt(2 / (fan_in * density)), so activations
keep their scale through the ReLUs), biases 0.01. The file (~240 MB, dense blobs with zeros, as
SkimCaffe stores them) loads into both prototxt/caffenet/deploy.prototxt and deploy_sparse.prototxt.
"""
import argparse
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: SkimCaffe's published CaffeNet densities (fraction of nonzero weights); other layers stay dense.
PUBLISHED_DENSITIES = {"conv2": 0.144, "conv3": 0.069, "conv4": 0.082, "conv5": 0.115,
                       "fc6": 0.097, "fc7": 0.156, "fc8": 0.262}


def pruned_weights(shape, density, rng):
    """A float32 array of ``shape``: exactly round(density * size) He-scaled Gaussian nonzeros at
    uniformly random positions."""
    size = int(np.prod(shape))
    fan_in = size // shape[0]
    keep = round(density * size)
    w = np.zeros(size, np.float32)
    idx = rng.choice(size, keep, replace=False) if keep < size else np.arange(size)
    w[idx] = rng.standard_normal(keep).astype(np.float32) * np.float32(np.sqrt(2.0 / (fan_in * density)))
    return w.reshape(shape)


def fill_pruned(net, densities=None, seed=0):
    """Fill the weights of a built CaffeNet in place (``net.params``); returns {layer: density}."""
    densities = PUBLISHED_DENSITIES if densities is None else densities
    rng = np.random.default_rng(seed)
    got = {}
    for name, blobs in net.params.items():
        d = densities.get(name, 1.0)
        blobs[0].data[...] = pruned_weights(blobs[0].data.shape, d, rng)
        for b in blobs[1:]:
            b.data[...] = 0.01
        got[name] = np.count_nonzero(blobs[0].data) / blobs[0].data.size
    for layer in net.layers:           # tell the sparse engines (as loading a caffemodel does)
        hook = getattr(layer, "weights_changed", None)
        if hook is not None:
            hook()
    return got


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="caffemodel to write")
    parser.add_argument("--model", default=str(ROOT / "prototxt" / "caffenet" / "deploy.prototxt"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import pyskim
    from pyskim.apps.time_net import load_param
    start = time.perf_counter()
    net = pyskim.Net(load_param(args.model, "dense", batch=1), pyskim.TEST)
    got = fill_pruned(net, seed=args.seed)
    net.save(args.out)
    for name, d in got.items():
        print(f"{name:8s} density {d:.4f}  ({np.count_nonzero(net.params[name][0].data)} nonzero)")
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
