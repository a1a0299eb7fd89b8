"""``classify.py input_file output_file [--model_def ...] [--pretrained_model ...] [--gpu] [--center_only]
[--images_dim H,W] [--mean_file F] [--input_scale S] [--raw_scale S] [--channel_swap 2,1,0] [--ext jpg]``:
classify images with a :class:`pyskim.Classifier` and save the predictions as a ``.npy`` file
(BVLC ``python/classify.py``, same flags and defaults).

``input_file`` is an image, a folder (every ``*.<ext>`` in it, in sorted order) or a ``.npy`` array of
H x W x K images. The default model is ``models/bvlc_reference_caffenet`` under the current folder
(the Caffe root), and the default mean is the ImageNet mean bundled with pyskim; ``--mean_file ''``
subtracts no mean. ``.npy`` files are loaded with ``allow_pickle=False``: they can hold arrays only,
never code. The output is an N x C array (C = the net's first output).
"""
import argparse
import glob
import os
import time

import numpy as np

from .. import io as caffe_io
from ..core.state import set_mode_cpu, set_mode_gpu
from ..errors import PyskimError
from ..pycaffe.classifier import Classifier

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MEAN = os.path.join(PACKAGE_DIR, "imagenet", "ilsvrc_2012_mean.npy")


def add_model_arguments(parser):
    """The model flags pycaffe's classify.py and detect.py share: ``--model_def``,
    ``--pretrained_model`` (the reference CaffeNet under the Caffe root by default) and ``--gpu``."""
    parser.add_argument("--model_def", default=os.path.join("models", "bvlc_reference_caffenet", "deploy.prototxt"),
                        help="Model definition file.")
    parser.add_argument("--pretrained_model",
                        default=os.path.join("models", "bvlc_reference_caffenet",
                                             "bvlc_reference_caffenet.caffemodel"),
                        help="Trained model weights file.")
    parser.add_argument("--gpu", action="store_true", help="Switch for gpu computation.")


def add_preprocessing_arguments(parser, mean_help):
    """The input preprocessing flags classify.py and detect.py share: ``--mean_file`` (described by
    ``mean_help``; the bundled ImageNet mean by default), ``--input_scale``, ``--raw_scale`` and
    ``--channel_swap``."""
    parser.add_argument("--mean_file", default=DEFAULT_MEAN, help=mean_help)
    parser.add_argument("--input_scale", type=float,
                        help="Multiply input features by this scale to finish preprocessing.")
    parser.add_argument("--raw_scale", type=float, default=255.0,
                        help="Multiply raw input by this scale before preprocessing.")
    parser.add_argument("--channel_swap", default="2,1,0",
                        help="Order to permute input channels. The default converts RGB -> BGR since BGR is "
                             "the Caffe default by way of OpenCV.")


def build_parser():
    parser = argparse.ArgumentParser(prog="classify.py", description=__doc__.split("\n\n")[0])
    # Required arguments: input and output files.
    parser.add_argument("input_file", help="Input image, directory, or npy.")
    parser.add_argument("output_file", help="Output npy filename.")
    # Optional arguments.
    add_model_arguments(parser)
    parser.add_argument("--center_only", action="store_true",
                        help="Switch for prediction from center crop alone instead of averaging predictions "
                             "across crops (default).")
    parser.add_argument("--images_dim", default="256,256",
                        help="Canonical 'height,width' dimensions of input images.")
    add_preprocessing_arguments(parser, "Data set image mean of [Channels x Height x Width] dimensions (numpy "
                                        "array). Set to '' for no mean subtraction.")
    parser.add_argument("--ext", default="jpg",
                        help="Image file extension to take as input when a directory is given as the input file.")
    return parser


def set_compute_mode(gpu):
    """pycaffe scripts' ``--gpu`` switch: set GPU or CPU mode and print which, as BVLC's do."""
    if gpu:
        set_mode_gpu()
        print("GPU mode")
    else:
        set_mode_cpu()
        print("CPU mode")


def int_list(text, flag):
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise PyskimError(f"{flag} must be comma-separated integers, not {text!r}") from None


def load_npy(path):
    """A ``.npy`` array, refusing pickled objects."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise PyskimError(f"Could not load {path}: {e}") from None


def load_inputs(input_file, ext):
    """The images to classify: from a .npy array, every ``*.ext`` of a folder, or one image file."""
    input_file = os.path.expanduser(input_file)
    if input_file.endswith("npy"):
        print(f"Loading file: {input_file}")
        return load_npy(input_file)
    if os.path.isdir(input_file):
        print(f"Loading folder: {input_file}")
        return [caffe_io.load_image(im_f) for im_f in sorted(glob.glob(os.path.join(input_file, "*." + ext)))]
    print(f"Loading file: {input_file}")
    return [caffe_io.load_image(input_file)]


def run(args):
    """Classify the inputs and save the predictions, printing BVLC's progress lines."""
    image_dims = int_list(args.images_dim, "--images_dim")
    mean = load_npy(args.mean_file) if args.mean_file else None
    channel_swap = int_list(args.channel_swap, "--channel_swap") if args.channel_swap else None
    set_compute_mode(args.gpu)
    # Make classifier.
    classifier = Classifier(args.model_def, args.pretrained_model, image_dims=image_dims, mean=mean,
                            input_scale=args.input_scale, raw_scale=args.raw_scale, channel_swap=channel_swap)
    inputs = load_inputs(args.input_file, args.ext)
    print(f"Classifying {len(inputs)} inputs.")
    start = time.time()
    predictions = classifier.predict(inputs, not args.center_only)
    print(f"Done in {time.time() - start:.2f} s.")
    print(f"Saving results into {args.output_file}")
    np.save(args.output_file, predictions)
    return 0
