"""Name and field tables used by :mod:`pyskim.io.upgrade` (Caffe's ``upgrade_proto.cpp`` facts).

Kept apart from the upgrade logic so the logic reads as a short sequence of steps.
"""

# --- V0 -> V1 --------------------------------------------------------------------------------------

# V0 layer type strings (the lowercase names of the 2013 format) -> V1LayerParameter.LayerType name.
# "padding" is absent on purpose: padding layers are folded into the conv/pool layer that reads them
# before the per-layer upgrade, so one that survives to this table is an error.
V0_LAYER_TYPES = {
    "accuracy": "ACCURACY",
    "bnll": "BNLL",
    "concat": "CONCAT",
    "conv": "CONVOLUTION",
    "data": "DATA",
    "dropout": "DROPOUT",
    "euclidean_loss": "EUCLIDEAN_LOSS",
    "flatten": "FLATTEN",
    "hdf5_data": "HDF5_DATA",
    "hdf5_output": "HDF5_OUTPUT",
    "im2col": "IM2COL",
    "images": "IMAGE_DATA",
    "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT",
    "lrn": "LRN",
    "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS",
    "pool": "POOLING",
    "relu": "RELU",
    "sigmoid": "SIGMOID",
    "softmax": "SOFTMAX",
    "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT",
    "tanh": "TANH",
    "window_data": "WINDOW_DATA",
}

_DATA_SOURCES = {
    "data": "data_param",
    "hdf5_data": "hdf5_data_param",
    "images": "image_data_param",
    "window_data": "window_data_param",
}


def _for(types, target_field):
    """Map each V0 type in ``types`` (a dict type -> typed-param field) to (param, target_field)."""
    return {t: (param, target_field) for t, param in types.items()}


_CONV_IP = {"conv": "convolution_param", "innerproduct": "inner_product_param"}
_CONV_POOL = {"conv": "convolution_param", "pool": "pooling_param"}
_LRN = {"lrn": "lrn_param"}
_WINDOW = {"window_data": "window_data_param"}
_IMAGES = {"images": "image_data_param"}

# Flat V0LayerParameter field -> {V0 layer type: (V1 typed-param field, field inside it)}.
# A field set on a layer type missing from its dict is one Caffe cannot place ("Unknown parameter
# <field> for layer type <type>"). Message fields (fillers, hdf5_output_param) are copied whole;
# ``pool`` is an enum converted by value name.
V0_TYPED_FIELDS = {
    "num_output": _for(_CONV_IP, "num_output"),
    "biasterm": _for(_CONV_IP, "bias_term"),
    "weight_filler": _for(_CONV_IP, "weight_filler"),
    "bias_filler": _for(_CONV_IP, "bias_filler"),
    "pad": _for(_CONV_POOL, "pad"),
    "kernelsize": _for(_CONV_POOL, "kernel_size"),
    "group": {"conv": ("convolution_param", "group")},
    "stride": _for(_CONV_POOL, "stride"),
    "pool": {"pool": ("pooling_param", "pool")},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio")},
    "local_size": _for(_LRN, "local_size"),
    "alpha": _for(_LRN, "alpha"),
    "beta": _for(_LRN, "beta"),
    "k": _for(_LRN, "k"),
    "source": _for(dict(_DATA_SOURCES, infogain_loss="infogain_loss_param"), "source"),
    "batchsize": _for(_DATA_SOURCES, "batch_size"),
    "rand_skip": _for({"data": "data_param", "images": "image_data_param"}, "rand_skip"),
    "shuffle_images": _for(_IMAGES, "shuffle"),
    "new_height": _for(_IMAGES, "new_height"),
    "new_width": _for(_IMAGES, "new_width"),
    "concat_dim": {"concat": ("concat_param", "concat_dim")},
    "det_fg_threshold": _for(_WINDOW, "fg_threshold"),
    "det_bg_threshold": _for(_WINDOW, "bg_threshold"),
    "det_fg_fraction": _for(_WINDOW, "fg_fraction"),
    "det_context_pad": _for(_WINDOW, "context_pad"),
    "det_crop_mode": _for(_WINDOW, "crop_mode"),
    "hdf5_output_param": {"hdf5_output": ("hdf5_output_param", None)},  # None: copy the message
}

# V0 fields that go to transform_param whatever the layer type.
V0_TRANSFORM_FIELDS = {
    "scale": "scale",
    "meanfile": "mean_file",
    "cropsize": "crop_size",
    "mirror": "mirror",
}

# V0 fields handled outside the tables above (name, type, blobs, per-blob lr/decay), and the two that
# Caffe's upgrade drops without a word (new_num, new_channels).
V0_DIRECT_FIELDS = frozenset({"name", "type", "blobs", "blobs_lr", "weight_decay"})
V0_DROPPED_FIELDS = frozenset({"new_num", "new_channels"})

# --- deprecated data-transformation fields ---------------------------------------------------------

# V1 layer type name -> the typed param that may still hold transformation fields.
DATA_TRANSFORM_LAYERS = {
    "DATA": "data_param",
    "IMAGE_DATA": "image_data_param",
    "WINDOW_DATA": "window_data_param",
}
# Fields moved from those params into transform_param (same names on both sides).
DATA_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")

# --- V1 -> V2 --------------------------------------------------------------------------------------

# V1LayerParameter.LayerType value name -> the LayerParameter.type string. NONE becomes the empty
# string (Caffe sets type "" for it). 39 real types.
V1_TYPE_NAMES = {
    "NONE": "",
    "ABSVAL": "AbsVal",
    "ACCURACY": "Accuracy",
    "ARGMAX": "ArgMax",
    "BNLL": "BNLL",
    "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution",
    "DATA": "Data",
    "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise",
    "EXP": "Exp",
    "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss",
    "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN",
    "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN",
    "POOLING": "Pooling",
    "POWER": "Power",
    "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence",
    "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "SPLIT": "Split",
    "SLICE": "Slice",
    "TANH": "TanH",
    "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
}

# --- solver ----------------------------------------------------------------------------------------

# SolverParameter.SolverType value name -> SolverParameter.type string.
SOLVER_TYPE_NAMES = {
    "SGD": "SGD",
    "NESTEROV": "Nesterov",
    "ADAGRAD": "AdaGrad",
    "RMSPROP": "RMSProp",
    "ADADELTA": "AdaDelta",
    "ADAM": "Adam",
}
