"""``pyskim convert`` / ``tools/convert.py``: model conversion from the command line.

Subcommands::

    to-sparse MODEL.caffemodel OUT.npz          caffemodel (binary or HDF5) -> compact sparse file
                                                (docs/sparse_format.md)
    from-sparse IN.npz OUT.caffemodel           sparse file -> caffemodel (bit-exact round trip)
    to-onnx --model deploy.prototxt [--weights W.caffemodel] OUT.onnx [--input-shape 1,3,227,227]
            [--sparse-initializers]             (mostly-zero weights as ONNX sparse_initializers)
    from-onnx --onnx M.onnx --out-prototxt NET.prototxt --out-weights W.caffemodel
            [--input-shape [NAME:]1,3,224,224] [--fold-batchnorm]
                                                ONNX (opsets 11-21) -> deploy prototxt + caffemodel
                                                (docs/onnx_import.md)
    upgrade IN.caffemodel OUT.caffemodel        old-format (V0/V1) caffemodel -> current format

Exit status: 0 on success, 1 when the conversion failed (the message names the layer or file and the
reason), 2 on bad arguments.
"""
import argparse

from ..convert.onnx_export import export_onnx
from ..convert.onnx_import import import_onnx
from ..convert.sparse import caffemodel_to_sparse, sparse_to_caffemodel
from ..convert.upgrade import upgrade_caffemodel
from ..errors import PyskimError
from . import flags


def _shape(text):
    """``1,3,227,227`` or ``data:1,3,227,227`` -> (name or None, [dims])."""
    name, _, dims = text.rpartition(":") if ":" in text else (None, None, text)
    try:
        values = [int(d) for d in dims.replace("x", ",").split(",") if d.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: expected comma-separated integers, "
                                         f"optionally prefixed by 'blob:'") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: dims must be positive integers")
    return (name or None), values


def _to_sparse(args):
    stats = caffemodel_to_sparse(args.model, args.output)
    print(f"Wrote {args.output}: {stats['bytes']} bytes ({stats['ratio']:.4f} of the {stats['dense_bytes']}-byte "
          f"caffemodel); density {stats['density']:.4f} ({stats['nonzero']} of {stats['values']} values), "
          f"{stats['csr_fields']} of {stats['fields']} blob fields stored as CSR")


def _from_sparse(args):
    net = sparse_to_caffemodel(args.input, args.output)
    print(f"Wrote {args.output}: {net.ByteSize()} bytes")


def _input_shapes(given):
    """The ``--input-shape`` values as export_onnx / import_onnx take them: a dict by name when all are
    named, a list in input order when none is, None when there are none."""
    if not given:
        return None
    named = [name for name, _ in given]
    if all(named):
        return {name: dims for name, dims in given}
    if not any(named):
        return [dims for _, dims in given]
    raise PyskimError("--input-shape: name all the shapes (name:dims) or none of them")


def _to_onnx(args):
    shapes = _input_shapes(args.input_shape)
    model = export_onnx(args.model, args.weights, args.output, input_shapes=shapes, opset=args.opset,
                        sparse_initializers=args.sparse_initializers)
    graph = model.graph
    sparse = f", {len(graph.sparse_initializer)} sparse initializers" if args.sparse_initializers else ""
    print(f"Wrote {args.output}: opset {args.opset}, {len(graph.node)} nodes{sparse}, inputs "
          f"{[i.name for i in graph.input]}, outputs {[o.name for o in graph.output]}")


def _from_onnx(args):
    deploy, _ = import_onnx(args.onnx, args.out_prototxt, args.out_weights,
                            input_shapes=_input_shapes(args.input_shape), fold_batchnorm=args.fold_batchnorm)
    inputs = [layer.top[0] for layer in deploy.layer if layer.type == "Input"]
    read = {bottom for layer in deploy.layer for bottom in layer.bottom}
    outputs = [top for layer in deploy.layer for top in layer.top if top not in read]
    print(f"Wrote {args.out_prototxt} ({len(deploy.layer)} layers, inputs {inputs}, outputs "
          f"{list(dict.fromkeys(outputs))}) and {args.out_weights}")


def _upgrade(args):
    changed = upgrade_caffemodel(args.input, args.output)
    print(f"Wrote {args.output}" + ("" if changed else f" ({args.input} was already in the current format)"))


def _add_subcommand(subparsers, name, help_text, action, positionals):
    """Subcommand ``name`` that runs ``action(args)``, with the positional arguments ``positionals``
    (``(name, help)`` pairs in order); returns its parser for the options."""
    parser = subparsers.add_parser(name, help=help_text)
    flags.add_positionals(parser, positionals)
    parser.set_defaults(run=action)
    return parser


def build_parser():
    parser = argparse.ArgumentParser(prog="convert.py", description="Convert Caffe and ONNX models.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_subcommand(sub, "to-sparse", "caffemodel -> compact sparse .npz (CSR per weight blob)", _to_sparse,
                    [("model", "input .caffemodel (binary, or HDF5 .caffemodel.h5)"),
                     ("output", "output sparse file (.npz)")])
    _add_subcommand(sub, "from-sparse", "sparse .npz -> caffemodel (bit-exact)", _from_sparse,
                    [("input", "input sparse file (.npz)"), ("output", "output .caffemodel")])
    onnx = _add_subcommand(sub, "to-onnx", "prototxt + caffemodel -> ONNX", _to_onnx,
                           [("output", "output .onnx file")])
    onnx.add_argument("--model", required=True, help="deploy prototxt (inputs given by Input layers)")
    onnx.add_argument("--weights", help="caffemodel (default: the prototxt's fillers)")
    onnx.add_argument("--input-shape", action="append", type=_shape, metavar="[BLOB:]N,C,H,W",
                      help="override an input shape (repeat for several inputs)")
    onnx.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    onnx.add_argument("--sparse-initializers", action="store_true",
                      help="store weights that are mostly zeros (pruned) as ONNX sparse_initializers "
                           "(nonzero values + int64 indices) where that is smaller")
    onnx_in = _add_subcommand(sub, "from-onnx", "ONNX -> deploy prototxt + caffemodel", _from_onnx, [])
    onnx_in.add_argument("--onnx", required=True, help="input .onnx model (opsets 11-21)")
    onnx_in.add_argument("--out-prototxt", required=True, help="output deploy prototxt (Input layers)")
    onnx_in.add_argument("--out-weights", required=True, help="output .caffemodel")
    onnx_in.add_argument("--input-shape", action="append", type=_shape, metavar="[NAME:]N,C,H,W",
                         help="shape of a graph input (repeat for several; default: the model's, a symbolic "
                              "batch as 1)")
    onnx_in.add_argument("--fold-batchnorm", action="store_true",
                         help="fold BatchNormalization into the Convolution / InnerProduct before it "
                              "(default: BatchNorm + Scale layers)")
    _add_subcommand(sub, "upgrade", "V0/V1 caffemodel -> current format", _upgrade,
                    [("input", "input .caffemodel"), ("output", "output .caffemodel")])
    return parser


def run(args):
    """Run the chosen subcommand; returns 0 (a failure raises PyskimError naming the file or layer)."""
    args.run(args)
    return 0
