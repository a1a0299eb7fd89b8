"""pycaffe's ``caffe.Classifier``: a Net that classifies H x W x K images (BVLC ``classifier.py``).

Images are resized to ``image_dims``, then either ten crops of the net's input size are taken
(corners, centre and their mirrors, averaged: ``oversample=True``) or the centre crop alone; crops go
through a :class:`~pyskim.io.Transformer` (transpose to K x H x W, then the optional channel swap,
raw scale, mean and input scale) and the net's first output is returned per image.
"""
import numpy as np

from .. import io as caffe_io
from ..errors import NetError
from ..io.images import input_transformer
from ..proto import caffe_pb2
from .net import Net

__all__ = ["Classifier"]


class Classifier(Net):
    """``Classifier(model_file, pretrained_file, image_dims=None, mean=None, input_scale=None,
    raw_scale=None, channel_swap=None)``: a TEST-phase Net with image preprocessing.

    ``image_dims`` (H, W) is the size images are resized to before cropping; by default the net's
    input size (so the centre crop is the whole image). ``mean``, ``input_scale``, ``raw_scale`` and
    ``channel_swap`` configure ``self.transformer`` for the first input blob.
    """

    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None, input_scale=None,
                 raw_scale=None, channel_swap=None):
        super().__init__(model_file, caffe_pb2.TEST, weights=pretrained_file)
        self.transformer = input_transformer(self, "Classifier", model_file, mean, input_scale, raw_scale,
                                             channel_swap)
        in_ = self.inputs[0]
        self.crop_dims = np.array(self.blobs[in_].data.shape[2:])
        if image_dims is None or len(image_dims) == 0:
            image_dims = self.crop_dims
        self.image_dims = image_dims

    def predict(self, inputs, oversample=True):
        """Class scores (the net's first output) of each H x W x K image in ``inputs``.

        ``oversample=True`` averages the predictions of the ten crops of each image; ``False`` uses
        the centre crop only. Returns an N x C array for N images (for a softmax output, class
        probabilities).
        """
        if len(inputs) == 0:
            raise NetError("Classifier.predict needs at least one image")
        image_h, image_w = (int(d) for d in self.image_dims)
        batch = np.zeros((len(inputs), image_h, image_w, inputs[0].shape[2]), dtype=np.float32)
        for ix, image in enumerate(inputs):
            batch[ix] = caffe_io.resize_image(image, (image_h, image_w))
        if oversample:
            batch = caffe_io.oversample(batch, self.crop_dims)
        else:
            # Centre crop: centre +- half the crop size, truncated to integers as pycaffe does.
            center = np.array([image_h, image_w]) / 2.0
            crop = (np.tile(center, 2) + np.concatenate([-self.crop_dims / 2.0, self.crop_dims / 2.0]))
            crop = crop.astype(int)
            batch = batch[:, crop[0]:crop[2], crop[1]:crop[3], :]
        in_ = self.inputs[0]
        caffe_in = np.zeros((batch.shape[0], batch.shape[3]) + batch.shape[1:3], dtype=np.float32)
        for ix, crop_image in enumerate(batch):
            caffe_in[ix] = self.transformer.preprocess(in_, crop_image)
        out = self.forward_all(**{in_: caffe_in})
        predictions = out[self.outputs[0]]
        if oversample:
            predictions = predictions.reshape((len(predictions) // 10, 10, -1)).mean(1)
        return predictions
