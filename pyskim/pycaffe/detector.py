"""pycaffe's ``caffe.Detector``: classify windows cropped from images (BVLC ``detector.py``, R-CNN style).

``detect_windows`` crops each (ymin, xmin, ymax, xmax) window, warps it to the net's input size and
runs the net; with ``context_pad`` the crop is enlarged so that a ``context_pad``-pixel border of the
net input is surrounding context, and any part outside the image is filled with the mean, as in
R-CNN feature extraction. ``detect_selective_search`` needs the external
``selective_search_ijcv_with_python`` package (and MATLAB), which pyskim does not ship.
"""
import os

import numpy as np

from .. import io as caffe_io
from ..errors import NetError, PyskimError
from ..io.images import input_transformer
from ..proto import caffe_pb2
from .net import Net

__all__ = ["Detector"]


class Detector(Net):
    """``Detector(model_file, pretrained_file, mean=None, input_scale=None, raw_scale=None,
    channel_swap=None, context_pad=None)``: a TEST-phase Net for windowed detection."""

    def __init__(self, model_file, pretrained_file, mean=None, input_scale=None, raw_scale=None,
                 channel_swap=None, context_pad=None):
        super().__init__(model_file, caffe_pb2.TEST, weights=pretrained_file)
        self.transformer = input_transformer(self, "Detector", model_file, mean, input_scale, raw_scale,
                                             channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(self, images_windows):
        """Classify windows: ``images_windows`` is an iterable of (image filename, windows), each
        window (ymin, xmin, ymax, xmax). Returns one dict per window with keys ``window``,
        ``prediction`` (the net's first output for it) and ``filename``."""
        images_windows = [(fname, list(windows)) for fname, windows in images_windows]
        window_inputs = []
        for image_fname, windows in images_windows:
            image = caffe_io.load_image(image_fname).astype(np.float32)
            for window in windows:
                window_inputs.append(self.crop(image, window))
        if not window_inputs:
            return []
        in_ = self.inputs[0]
        caffe_in = np.zeros((len(window_inputs), window_inputs[0].shape[2]) + self.blobs[in_].data.shape[2:],
                            dtype=np.float32)
        for ix, window_in in enumerate(window_inputs):
            caffe_in[ix] = self.transformer.preprocess(in_, window_in)
        predictions = self.forward_all(**{in_: caffe_in})[self.outputs[0]]
        detections = []
        ix = 0
        for image_fname, windows in images_windows:
            for window in windows:
                detections.append({"window": window, "prediction": predictions[ix], "filename": image_fname})
                ix += 1
        return detections

    def detect_selective_search(self, image_fnames):
        """Classify Selective Search proposals. Needs ``selective_search_ijcv_with_python`` on
        ``sys.path`` (it runs MATLAB); without it this raises PyskimError: compute the windows
        elsewhere and call :meth:`detect_windows`."""
        try:
            import selective_search_ijcv_with_python as selective_search
        except ImportError:
            raise PyskimError(
                "Detector.detect_selective_search needs the selective_search_ijcv_with_python package "
                "(https://github.com/sergeyk/selective_search_ijcv_with_python, which runs MATLAB); it is "
                "not importable. Compute proposal windows elsewhere and call detect_windows("
                "[(filename, [(ymin, xmin, ymax, xmax), ...]), ...]).") from None
        image_fnames = [os.path.abspath(f) for f in image_fnames]
        windows_list = selective_search.get_windows(image_fnames, cmd="selective_search_rcnn")
        return self.detect_windows(zip(image_fnames, windows_list))

    def crop(self, im, window):
        """Crop ``window`` = (ymin, xmin, ymax, xmax) from the H x W x K image ``im``; with
        ``context_pad`` return the net-input-sized crop with context and mean padding."""
        window = np.asarray(window)
        ymin, xmin, ymax, xmax = (int(v) for v in window[:4])
        crop = im[ymin:ymax, xmin:xmax]
        if not self.context_pad:
            return crop
        crop_size = self.blobs[self.inputs[0]].width  # assumes a square input, as pycaffe
        scale = crop_size / (1.0 * crop_size - self.context_pad * 2)
        # Enlarge the box about its centre so the context fills the padding border.
        half_h = (ymax - ymin + 1) / 2.0
        half_w = (xmax - xmin + 1) / 2.0
        center = (ymin + half_h, xmin + half_w)
        box = np.round(np.tile(center, 2) + scale * np.array((-half_h, -half_w, half_h, half_w)))
        scale_h = crop_size / (box[2] - box[0] + 1)
        scale_w = crop_size / (box[3] - box[1] + 1)
        pad_y = round(max(0, -box[0]) * scale_h)  # part of the box above/left of the image
        pad_x = round(max(0, -box[1]) * scale_w)
        im_h, im_w = im.shape[:2]
        box = np.clip(box, 0.0, [im_h, im_w, im_h, im_w]).astype(int)
        clip_h = box[2] - box[0] + 1
        clip_w = box[3] - box[1] + 1
        if clip_h <= 0 or clip_w <= 0:
            raise NetError(f"window {window.tolist()} lies outside the {im_h} x {im_w} image")
        crop_h = min(round(clip_h * scale_h), crop_size - pad_y)
        crop_w = min(round(clip_w * scale_w), crop_size - pad_x)
        context_crop = caffe_io.resize_image(im[box[0]:box[2], box[1]:box[3]], (crop_h, crop_w))
        crop = np.ones(self.crop_dims, dtype=np.float32) * self.crop_mean
        crop[pad_y:pad_y + crop_h, pad_x:pad_x + crop_w] = context_crop
        return crop

    def configure_crop(self, context_pad):
        """Set ``crop_dims`` (the net input as H x W x K) and ``context_pad``; with context, also
        ``crop_mean``: the transformer's mean mapped back to raw image space for the padding."""
        in_ = self.inputs[0]
        inverse = np.argsort(self.transformer.transpose[in_])
        self.crop_dims = np.array(self.blobs[in_].data.shape[1:])[inverse]
        self.context_pad = context_pad
        if not self.context_pad:
            return
        mean = self.transformer.mean.get(in_)
        if mean is None:
            self.crop_mean = np.zeros(self.crop_dims, dtype=np.float32)
            return
        crop_mean = np.array(mean, dtype=np.float32).transpose(inverse)
        channel_swap = self.transformer.channel_swap.get(in_)
        if channel_swap is not None:
            crop_mean = crop_mean[:, :, np.argsort(channel_swap)]
        raw_scale = self.transformer.raw_scale.get(in_)
        if raw_scale is not None:
            crop_mean /= raw_scale
        self.crop_mean = crop_mean
