"""``detect.py input_file output_file [--crop_mode list|selective_search] [--model_def ...]
[--pretrained_model ...] [--gpu] [--mean_file F] [--input_scale S] [--raw_scale S] [--channel_swap 2,1,0]
[--context_pad 16]``: classify image windows with a :class:`pyskim.Detector` (BVLC ``python/detect.py``,
same flags and defaults).

Input: a ``.txt`` list of image file names (``--crop_mode selective_search``, which needs the external
``selective_search_ijcv_with_python`` package), or a ``.csv`` file with the header
``filename,xmin,ymin,xmax,ymax`` and one window per row (``--crop_mode list``).

Output, by extension: ``.csv`` has the columns ``filename,ymin,xmin,ymax,xmax,class0,...`` (one row per
window; BVLC's script fails here on an undefined name); ``.h5`` (h5py, no pandas) has the datasets
``filename`` (strings), ``window`` (N x 4, ymin/xmin/ymax/xmax) and ``prediction`` (N x C) where BVLC
writes a pandas DataFrame. As in BVLC, a mean file of C x H x W is averaged to a per-channel mean.
"""
import argparse
import csv
import time

import numpy as np

from ..errors import PyskimError
from ..pycaffe.detector import Detector
from .classify import add_model_arguments, add_preprocessing_arguments, int_list, load_npy, set_compute_mode

CROP_MODES = ['list', 'selective_search']
COORD_COLS = ['ymin', 'xmin', 'ymax', 'xmax']


def build_parser():
    parser = argparse.ArgumentParser(prog="detect.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("input_file",
                        help="Input txt/csv filename. If .txt, must be list of filenames. If .csv, must be "
                             "comma-separated file with header 'filename, xmin, ymin, xmax, ymax'")
    parser.add_argument("output_file", help="Output h5/csv filename. Format depends on extension.")
    add_model_arguments(parser)
    parser.add_argument("--crop_mode", default="selective_search", choices=CROP_MODES,
                        help="How to generate windows for detection.")
    add_preprocessing_arguments(parser, "Data set image mean of H x W x K dimensions (numpy array). Set to '' "
                                        "for no mean subtraction.")
    parser.add_argument("--context_pad", type=int, default=16,
                        help="Amount of surrounding context to collect in input window.")
    return parser


def read_windows_csv(path):
    """``[(filename, [(ymin, xmin, ymax, xmax), ...]), ...]`` from a CSV window list, in file order."""
    grouped = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f, skipinitialspace=True)
        missing = {"filename", "xmin", "ymin", "xmax", "ymax"} - set(reader.fieldnames or [])
        if missing:
            raise PyskimError(f"{path}: the header lacks {', '.join(sorted(missing))}")
        for line, row in enumerate(reader, start=2):
            try:
                window = tuple(float(row[col]) for col in COORD_COLS)
            except (TypeError, ValueError):
                raise PyskimError(f"{path}:{line}: window coordinates must be numbers") from None
            grouped.setdefault(row["filename"], []).append(window)
    return [(fname, np.array(windows)) for fname, windows in grouped.items()]


def save_detections(path, detections):
    windows = np.array([np.asarray(d["window"], dtype=float)[:4] for d in detections]).reshape(-1, 4)
    predictions = np.array([np.ravel(d["prediction"]) for d in detections])
    if path.lower().endswith("csv"):
        num_classes = predictions.shape[1] if len(predictions) else 0
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["filename", *COORD_COLS, *(f"class{c}" for c in range(num_classes))])
            for d, window, prediction in zip(detections, windows, predictions):
                writer.writerow([d["filename"], *window.tolist(), *prediction.tolist()])
    else:
        import h5py
        with h5py.File(path, "w") as f:
            f.create_dataset("filename", data=np.array([d["filename"] for d in detections], dtype=object),
                             dtype=h5py.string_dtype())
            f.create_dataset("window", data=windows)
            f.create_dataset("prediction", data=predictions)


def run(args):
    """Detect on the listed images or windows and save the detections, printing BVLC's progress lines."""
    mean = channel_swap = None
    if args.mean_file:
        mean = load_npy(args.mean_file)
        if mean.ndim == 3 and mean.shape[1:] != (1, 1):
            mean = mean.mean(1).mean(1)
    if args.channel_swap:
        channel_swap = int_list(args.channel_swap, "--channel_swap")
    set_compute_mode(args.gpu)
    detector = Detector(args.model_def, args.pretrained_model, mean=mean, input_scale=args.input_scale,
                        raw_scale=args.raw_scale, channel_swap=channel_swap, context_pad=args.context_pad)
    t = time.time()
    print("Loading input...")
    lowered = args.input_file.lower()
    if lowered.endswith("txt"):
        with open(args.input_file) as f:
            inputs = [line.strip() for line in f if line.strip()]
        if args.crop_mode == "list":
            raise PyskimError("--crop_mode list needs a .csv input with the windows")
        detections = detector.detect_selective_search(inputs)
    elif lowered.endswith("csv"):
        images_windows = read_windows_csv(args.input_file)
        if args.crop_mode == "list":
            detections = detector.detect_windows(images_windows)
        else:
            detections = detector.detect_selective_search([fname for fname, _ in images_windows])
    else:
        raise PyskimError(f"{args.input_file}: unknown input file type: not in txt or csv.")
    print(f"Processed {len(detections)} windows in {time.time() - t:.3f} s.")
    t = time.time()
    save_detections(args.output_file, detections)
    print(f"Saved to {args.output_file} in {time.time() - t:.3f} s.")
    return 0
