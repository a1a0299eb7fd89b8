"""pycaffe's ``caffe/imagenet`` data: ``ilsvrc_2012_mean.npy``, the ILSVRC-2012 mean image (3x256x256, BGR)."""
