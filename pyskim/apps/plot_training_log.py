"""``plot_training_log.py chart_type[0-7] /where/to/save.png /path/to/first.log ...``: plot Caffe (or
pyskim) training logs with matplotlib (BVLC ``tools/extra/plot_training_log.py.example``).

Chart types, as BVLC numbers them::

    0: Test accuracy  vs. Iters        4: Train learning rate  vs. Iters
    1: Test accuracy  vs. Seconds      5: Train learning rate  vs. Seconds
    2: Test loss  vs. Iters            6: Train loss  vs. Iters
    3: Test loss  vs. Seconds          7: Train loss  vs. Seconds

Log names must end in ``.log``; each log is one line labelled with its name. Unlike BVLC's script,
which runs ``parse_log.sh`` and leaves ``<log>.train``/``<log>.test`` files in the current folder,
the logs are parsed in memory by :mod:`pyskim.apps.parse_log`. "Test accuracy" and "Test loss" are
the test net outputs named ``accuracy`` and ``loss`` (else the first output whose name contains
"acc" / "loss"). Colours and markers are fixed per log (BVLC draws random ones), so plots are
reproducible; no window is opened (the Agg backend is used unless one was chosen).
"""
import argparse
import os

from ..errors import PyskimError
from .parse_log import parse_log

__all__ = ["build_parser", "get_chart_type_description", "get_supported_chart_types", "load_data",
           "plot_chart", "run"]

LOG_FILE_SUFFIX = '.log'
SEPARATOR = '  vs. '
X_AXIS_FIELDS = ('Iters', 'Seconds')
#: the data file (train or test rows) and column behind each field
FIELD_INDEX = {
    'Train': {'Iters': 'NumIters', 'Seconds': 'Seconds', 'Train loss': 'loss',
              'Train learning rate': 'LearningRate'},
    'Test': {'Iters': 'NumIters', 'Seconds': 'Seconds', 'Test accuracy': 'accuracy', 'Test loss': 'loss'},
}
MARKERS = ('o', 's', '^', 'v', 'D', 'x', '+', '*', 'p', 'h')
COLORS = ('tab:blue', 'tab:red', 'tab:green', 'tab:orange', 'tab:purple', 'tab:brown', 'tab:pink',
          'tab:gray', 'tab:olive', 'tab:cyan')


class PlotError(PyskimError):
    """A bad chart type, output path or log, or a log without the data a chart needs."""


def _fields():
    return sorted({field for index in FIELD_INDEX.values() for field in index})


def get_supported_chart_types():
    """The chart descriptions, "<y field>  vs. <x field>", in BVLC's order."""
    fields = _fields()
    return [f'{y}{SEPARATOR}{x}' for y in fields if y not in X_AXIS_FIELDS
            for x in fields if x in X_AXIS_FIELDS]


def get_chart_type_description(chart_type):
    return get_supported_chart_types()[chart_type]


def get_field_descriptions(chart_type):
    """``(x_axis_field, y_axis_field)`` of a chart type."""
    y_axis_field, x_axis_field = get_chart_type_description(chart_type).split(SEPARATOR)
    return x_axis_field, y_axis_field


def get_data_file_type(chart_type):
    """'Train' or 'Test': which rows a chart plots."""
    return get_chart_type_description(chart_type).split()[0]


def _column(rows, wanted, fallback):
    if wanted in rows[0]:
        return wanted
    for name in rows[0]:
        if fallback in name.lower() and name not in ('NumIters', 'Seconds', 'LearningRate'):
            return name
    raise PlotError(f"no '{wanted}' output in the log (outputs: {', '.join(list(rows[0])[3:])})")


def load_data(path_to_log, chart_type):
    """``[xs, ys]`` of one chart for one log."""
    train_rows, test_rows = parse_log(path_to_log)
    kind = get_data_file_type(chart_type)
    rows = train_rows if kind == 'Train' else test_rows
    if not rows:
        raise PlotError(f"{path_to_log}: no {kind.lower()} lines to plot (is it a training log?)")
    x_field, y_field = get_field_descriptions(chart_type)
    index = FIELD_INDEX[kind]
    x_col, y_col = index[x_field], index[y_field]
    if y_col in ('accuracy', 'loss'):
        y_col = _column(rows, y_col, 'acc' if y_col == 'accuracy' else 'loss')
    return [[row[x_col] for row in rows if y_col in row], [row[y_col] for row in rows if y_col in row]]


def get_data_label(path_to_log):
    name = os.path.basename(path_to_log)
    return name.removesuffix(LOG_FILE_SUFFIX)


def get_legend_loc(chart_type):
    _, y_axis = get_field_descriptions(chart_type)
    return 'upper right' if 'loss' in y_axis or 'learning rate' in y_axis else 'lower right'


def plot_chart(chart_type, path_to_png, path_to_log_list):
    """Draw one chart of all logs into ``path_to_png``."""
    import matplotlib
    if 'MPLBACKEND' not in os.environ:
        matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    x_axis_field, y_axis_field = get_field_descriptions(chart_type)
    figure = plt.figure()
    try:
        for i, path_to_log in enumerate(path_to_log_list):
            xs, ys = load_data(path_to_log, chart_type)
            plt.plot(xs, ys, label=get_data_label(path_to_log), color=COLORS[i % len(COLORS)],
                     marker=MARKERS[i % len(MARKERS)], linewidth=0.75)
        plt.legend(loc=get_legend_loc(chart_type), ncol=1)
        plt.title(get_chart_type_description(chart_type))
        plt.xlabel(x_axis_field)
        plt.ylabel(y_axis_field)
        plt.savefig(path_to_png)
    finally:
        plt.close(figure)


def usage():
    types = get_supported_chart_types()
    lines = [
        "This script mainly serves as the basis of your customizations.",
        "Customization is a must.",
        "You can copy, paste, edit them in whatever way you want.",
        "Be warned that the fields in the training log may change in the future.",
        "You had better check the data files and change the mapping from field name to",
        " field index in FIELD_INDEX (pyskim.apps.plot_training_log) before designing your own plots.",
        "Usage:",
        f"    ./plot_training_log.py chart_type[0-{len(types) - 1}] /where/to/save.png /path/to/first.log ...",
        "Notes:",
        "    1. Supporting multiple logs.",
        f'    2. Log file name must end with the lower-cased "{LOG_FILE_SUFFIX}".',
        "Supported chart types:",
    ]
    lines += [f"    {i}: {description}" for i, description in enumerate(types)]
    return "\n".join(lines)


def build_parser():
    """BVLC's script reads its arguments itself: they are kept as given, ``-h``/``--help`` asks for the usage."""
    parser = argparse.ArgumentParser(prog='plot_training_log.py', usage=usage(), add_help=False)
    parser.add_argument('-h', '--help', action='store_true', help='print the usage')
    parser.add_argument('arguments', nargs='*', help='chart_type /where/to/save.png /path/to/first.log ...')
    return parser


def run(args):
    """Check the arguments as BVLC's script does (messages on stdout, exit 1) and draw the chart."""
    argv = args.arguments
    if args.help or len(argv) < 3:
        print(usage())
        return 0 if args.help else 1
    try:
        chart_type = int(argv[0])
    except ValueError:
        chart_type = -1
    if not 0 <= chart_type < len(get_supported_chart_types()):
        print(f'{argv[0]} is not a valid chart type.')
        print(usage())
        return 1
    path_to_png = argv[1]
    if not path_to_png.endswith('.png'):
        print(f'Path must end with png: {path_to_png}')
        return 1
    for path_to_log in argv[2:]:
        if not os.path.exists(path_to_log):
            print(f'Path does not exist: {path_to_log}')
            return 1
        if not path_to_log.endswith(LOG_FILE_SUFFIX):
            print(f'Log file must end in {LOG_FILE_SUFFIX}.')
            print(usage())
            return 1
    plot_chart(chart_type, path_to_png, argv[2:])
    return 0
