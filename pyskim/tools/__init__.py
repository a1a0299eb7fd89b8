"""Caffe's command-line data tools (``convert_imageset``, ``compute_image_mean``,
``convert_mnist_data``), each a ``main(argv=None)`` taking Caffe's gflags-style flags
(:mod:`.flags`)."""
