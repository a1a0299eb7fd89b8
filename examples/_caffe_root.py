"""Set up a work folder laid out like a Caffe checkout, so the official notebooks' code runs unchanged.

Not part of the notebooks: each ``examples/*.py`` script calls :func:`prepare` first. The notebooks
expect to run in ``{caffe_root}/examples`` with ``caffe_root = '../'``, and read files that Caffe's
download scripts fetch. Nothing is downloaded here; local equivalents are made instead:

* ``models/bvlc_reference_caffenet/deploy.prototxt`` is BVLC's, from ``../shared/models/bvlc``;
  ``bvlc_reference_caffenet.caffemodel`` (``scripts/download_model_binary.py``) holds **random**
  weights (He-scaled Gaussians, seed 0), since the real weights are not available offline. Its
  predictions are therefore meaningless, but every shape and code path is the real one.
* ``data/ilsvrc12/synset_words.txt`` (``data/ilsvrc12/get_ilsvrc_aux.sh``): 1000 placeholder labels.
* ``python/caffe/imagenet/ilsvrc_2012_mean.npy``: the mean shipped with pyskim (= BVLC's).
* ``examples/images``, ``examples/net_surgery``, ``examples/mnist/lenet_auto_solver.prototxt``: BVLC's
  files from ``../shared``.
* ``examples/mnist/mnist_{train,test}_lmdb`` (``data/mnist/get_mnist.sh`` + ``create_mnist.sh``):
  made by pyskim's ``convert_mnist_data`` tool from the **Fashion-MNIST** idx files in
  ``../shared/datasets/fashion-mnist`` (same format as MNIST, 28 x 28 gray, 10 classes).

The work folder is the first command-line argument, else ``$PYSKIM_EXAMPLES_ROOT``, else
``./caffe_root``; files already there are reused (the random caffemodel takes a while to write).
``$PYSKIM_SHARED`` overrides the location of ``shared/`` (default: next to this repository).

Plots use matplotlib's non-interactive Agg backend (unless ``$MPLBACKEND`` names another); the figures
still open when the script ends are saved as ``examples/figures/<script>_<n>.png`` in the work folder
(``PYSKIM_EXAMPLES_FIGURES=0`` skips that).
"""
import atexit
import os
import shutil
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAFFENET = os.path.join("models", "bvlc_reference_caffenet")


def shared_dir():
    return os.environ.get("PYSKIM_SHARED", os.path.join(os.path.dirname(REPO), "shared"))


def _copy(src, dst):
    if not os.path.exists(dst):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(src, dst)     # not the (read-only) mode bits of shared/


def _random_caffenet(root):
    """The CaffeNet deploy net with random weights, saved where download_model_binary.py puts it."""
    import pyskim as caffe

    path = os.path.join(root, CAFFENET, "bvlc_reference_caffenet.caffemodel")
    if os.path.exists(path):
        return
    print("Making a CaffeNet caffemodel with random weights (the real one cannot be downloaded)...")
    net = caffe.Net(os.path.join(root, CAFFENET, "deploy.prototxt"), caffe.TEST)
    rng = np.random.default_rng(0)
    for params in net.params.values():
        weights = params[0].data
        weights[...] = rng.standard_normal(weights.shape, dtype=np.float32) * np.sqrt(2.0 / weights[0].size)
        params[1].data[...] = 0.01
    net.save(path + ".part")
    os.replace(path + ".part", path)


def _labels(root):
    path = os.path.join(root, "data", "ilsvrc12", "synset_words.txt")
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.writelines(f"n{i:08d} placeholder class {i}\n" for i in range(1000))


def _mnist_lmdbs(root):
    from pyskim.apps import convert_mnist_data

    fashion = os.path.join(shared_dir(), "datasets", "fashion-mnist")
    for split, prefix in (("train", "train"), ("test", "t10k")):
        db = os.path.join(root, "examples", "mnist", f"mnist_{split}_lmdb")
        if os.path.exists(db):
            continue
        print(f"Converting Fashion-MNIST {split} images into {db}...")
        shutil.rmtree(db + ".part", ignore_errors=True)     # left over from an interrupted run
        convert_mnist_data.convert(os.path.join(fashion, f"{prefix}-images-idx3-ubyte.gz"),
                                   os.path.join(fashion, f"{prefix}-labels-idx1-ubyte.gz"), db + ".part")
        os.replace(db + ".part", db)


def _save_figures(folder, name):
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is None or os.environ.get("PYSKIM_EXAMPLES_FIGURES") == "0":
        return
    os.makedirs(folder, exist_ok=True)
    for number in pyplot.get_fignums():
        pyplot.figure(number).savefig(os.path.join(folder, f"{name}_{number}.png"), dpi=60)


def prepare(name, caffenet=False, mnist=False):
    """Lay out the work folder, change into its ``examples`` folder and return the root's path;
    ``name`` names the figures saved at exit."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    args = [a for a in sys.argv[1:] if not a.startswith("-")]
    root = os.path.abspath(args[0] if args else os.environ.get("PYSKIM_EXAMPLES_ROOT", "caffe_root"))
    bvlc = os.path.join(shared_dir(), "models", "bvlc")
    for image in ("cat.jpg", "cat_gray.jpg", "fish-bike.jpg"):
        _copy(os.path.join(bvlc, "examples", "images", image), os.path.join(root, "examples", "images", image))
    for proto in ("conv.prototxt", "bvlc_caffenet_full_conv.prototxt"):
        _copy(os.path.join(bvlc, "examples", "net_surgery", proto),
              os.path.join(root, "examples", "net_surgery", proto))
    _copy(os.path.join(bvlc, "examples", "mnist", "lenet_auto_solver.prototxt"),
          os.path.join(root, "examples", "mnist", "lenet_auto_solver.prototxt"))
    import pyskim
    _copy(os.path.join(os.path.dirname(pyskim.__file__), "imagenet", "ilsvrc_2012_mean.npy"),
          os.path.join(root, "python", "caffe", "imagenet", "ilsvrc_2012_mean.npy"))
    _copy(os.path.join(bvlc, CAFFENET, "deploy.prototxt"), os.path.join(root, CAFFENET, "deploy.prototxt"))
    _labels(root)
    if caffenet:
        _random_caffenet(root)
    if mnist:
        _mnist_lmdbs(root)
    os.chdir(os.path.join(root, "examples"))
    import matplotlib.pyplot  # noqa: F401  (first, so that its exit hook closing all figures runs after ours)
    atexit.register(_save_figures, os.path.join(root, "examples", "figures"), name)
    return root
