"""``draw_net.py input_net_proto_file output_image_file [--rankdir LR] [--phase TRAIN|TEST|ALL]
[--display_lrm]``: draw a graph of the net architecture (BVLC ``python/draw_net.py``).

The image format follows the output file's extension (``.png``, ``.svg``, ``.pdf``, ...; ``.raw``
writes the Graphviz DOT source and needs no Graphviz). Needs pydot, and Graphviz's ``dot`` for
images. V0/V1 prototxts are upgraded before drawing.
"""
from argparse import ArgumentDefaultsHelpFormatter, ArgumentParser

from ..errors import PyskimError
from ..io.upgrade import read_net_text
from ..proto import caffe_pb2
from ..pycaffe import draw

PHASES = {"TRAIN": caffe_pb2.TRAIN, "TEST": caffe_pb2.TEST, "ALL": None}


def build_parser():
    parser = ArgumentParser(prog="draw_net.py", description="Draw a graph of the net architecture.",
                            formatter_class=ArgumentDefaultsHelpFormatter)
    parser.add_argument("input_net_proto_file", help="Input network prototxt file")
    parser.add_argument("output_image_file", help="Output image file")
    parser.add_argument("--rankdir", default="LR",
                        help="One of TB (top-bottom, i.e., vertical), RL (right-left, i.e., horizontal), "
                             "and several more.")
    parser.add_argument("--phase", default="ALL", choices=PHASES,
                        help="Which network phase to draw: can be TRAIN, TEST, or ALL.  If ALL, then all "
                             "layers are drawn regardless of phase.")
    parser.add_argument("--display_lrm", action="store_true",
                        help="Use this flag to visualize the learning rate multiplier, when non-zero, for "
                             "the learning layers (Convolution, Deconvolution, InnerProduct).")
    return parser


def run(args):
    """Draw the net into the image file."""
    net = read_net_text(args.input_net_proto_file)
    print(f"Drawing net to {args.output_image_file}")
    try:
        draw.draw_net_to_file(net, args.output_image_file, args.rankdir, PHASES[args.phase], args.display_lrm)
    except ValueError as e:    # pycaffe's draw raises ValueError on a layer it cannot draw
        raise PyskimError(f"{args.input_net_proto_file}: {e}") from None
    return 0
