"""``parse_log.py LOGFILE OUTPUT_DIR [--verbose] [--delimiter D]``: a Caffe (or pyskim) training log to
two CSV files, ``OUTPUT_DIR/<log name>.train`` and ``.test`` (BVLC ``tools/extra/parse_log.py``).

Parsing starts at the "Solving <net>" line. Each CSV row holds ``NumIters``, ``Seconds`` (since that
line), ``LearningRate`` and one column per net output (``loss``, ``accuracy``, ...) of one display
(train) or one test pass (test). Like BVLC's script, the learning rate of the first row, logged only
after it, is copied from the second row; a row is complete once it has as many columns as the first.

Time stamps: glog's classic ``I1127 20:54:38.651667`` prefix has no year, which is taken from the
log file's ctime and advanced when the month goes back (a log crossing New Year), as BVLC's
``extract_seconds.py`` does; newer glog's ``I20261127 20:54:38.651667`` carries the year and is
used as is. Lines with a malformed prefix (e.g. lines a resumed solver prints) are skipped.
"""
import argparse
import csv
import datetime
import os
import re
from collections import OrderedDict

__all__ = ["build_parser", "extract_datetime_from_line", "get_log_created_year", "get_start_time",
           "parse_log", "run", "save_csv_files", "write_csv"]

REGEX_ITERATION = re.compile(r'Iteration (\d+)')
REGEX_TRAIN_OUTPUT = re.compile(r'Train net output #(\d+): (\S+) = ([\.\deE+-]+)')
REGEX_TEST_OUTPUT = re.compile(r'Test net output #(\d+): (\S+) = ([\.\deE+-]+)')
REGEX_LEARNING_RATE = re.compile(r'lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)')
_STAMP = re.compile(r'^[IWEF](\d{4}|\d{8}) (\d{1,2}):(\d{2}):(\d{2})\.(\d{1,6})\b')


def _parse_stamp(line):
    """``(year or None, month, day, hour, minute, second, microsecond)`` of a glog line; ValueError
    when the line has no glog prefix."""
    match = _STAMP.match(line.strip())
    if not match:
        raise ValueError(f"no glog time stamp at the start of {line.strip()[:40]!r}")
    date, hour, minute, second, fraction = match.groups()
    year = int(date[:4]) if len(date) == 8 else None
    month, day = int(date[-4:-2]), int(date[-2:])
    return year, month, day, int(hour), int(minute), int(second), int(fraction.ljust(6, "0"))


def extract_datetime_from_line(line, year):
    """The time stamp of a glog line as a datetime (``year`` is used when the line has none)."""
    line_year, *rest = _parse_stamp(line)
    return datetime.datetime(line_year or year, *rest)


def get_log_created_year(input_file):
    """The year the log file was created (its ctime), for year-less glog stamps."""
    return datetime.datetime.fromtimestamp(os.path.getctime(input_file)).year


def get_start_time(line_iterable, year):
    """The time of the first "Solving" line, consuming the lines up to it; None if there is none."""
    for line in line_iterable:
        if 'Solving' in line:
            return extract_datetime_from_line(line, year)
    return None


def parse_log(path_to_log):
    """Parse a training log into ``(train_dict_list, test_dict_list)``: lists of OrderedDict rows
    with the keys NumIters, Seconds, LearningRate and the net outputs."""
    iteration = -1
    learning_rate = float('NaN')
    train_dict_list, test_dict_list = [], []
    train_row = test_row = None
    logfile_year = get_log_created_year(path_to_log)
    with open(path_to_log, errors='replace') as f:
        start_time = get_start_time(f, logfile_year)
        if start_time is None:
            return train_dict_list, test_dict_list
        last_time = start_time
        for line in f:
            iteration_match = REGEX_ITERATION.search(line)
            if iteration_match:
                iteration = float(iteration_match.group(1))
            if iteration == -1:
                # Only start parsing for other stuff if we've found the first iteration
                continue
            try:
                stamp_year = _parse_stamp(line)[0]
                time = extract_datetime_from_line(line, logfile_year)
            except ValueError:
                # Skip lines with bad formatting, for example when resuming solver
                continue
            if stamp_year is None and time.month < last_time.month:
                # a year-less log that crossed New Year
                logfile_year += 1
                time = extract_datetime_from_line(line, logfile_year)
            last_time = time
            seconds = (time - start_time).total_seconds()

            learning_rate_match = REGEX_LEARNING_RATE.search(line)
            if learning_rate_match:
                learning_rate = float(learning_rate_match.group(1))

            train_dict_list, train_row = parse_line_for_net_output(
                REGEX_TRAIN_OUTPUT, train_row, train_dict_list, line, iteration, seconds, learning_rate)
            test_dict_list, test_row = parse_line_for_net_output(
                REGEX_TEST_OUTPUT, test_row, test_dict_list, line, iteration, seconds, learning_rate)

    fix_initial_nan_learning_rate(train_dict_list)
    fix_initial_nan_learning_rate(test_dict_list)
    return train_dict_list, test_dict_list


def parse_line_for_net_output(regex_obj, row, row_dict_list, line, iteration, seconds, learning_rate):
    """Add a net output found in ``line`` to the current ``row`` (starting a new row at a new
    iteration); push the row to ``row_dict_list`` once it is full. Returns ``(row_dict_list, row)``."""
    output_match = regex_obj.search(line)
    if output_match:
        if not row or row['NumIters'] != iteration:
            # Push the last row and start a new one
            if row:
                row_dict_list.append(row)
            row = OrderedDict([('NumIters', iteration), ('Seconds', seconds),
                               ('LearningRate', learning_rate)])
        output_name = output_match.group(2)
        row[output_name] = float(output_match.group(3))
    if row and len(row_dict_list) >= 1 and len(row) == len(row_dict_list[0]):
        # The row is full, based on the fact that it has the same number of columns as the first row
        row_dict_list.append(row)
        row = None
    return row_dict_list, row


def fix_initial_nan_learning_rate(dict_list):
    """Caffe logs the learning rate only after the first test and training step: copy the second
    row's rate into the first."""
    if len(dict_list) > 1:
        dict_list[0]['LearningRate'] = dict_list[1]['LearningRate']


def save_csv_files(logfile_path, output_dir, train_dict_list, test_dict_list, delimiter=',',
                   verbose=False):
    """Write ``<output_dir>/<log basename>.train`` and ``.test``."""
    log_basename = os.path.basename(logfile_path)
    write_csv(os.path.join(output_dir, log_basename + '.train'), train_dict_list, delimiter, verbose)
    write_csv(os.path.join(output_dir, log_basename + '.test'), test_dict_list, delimiter, verbose)


def write_csv(output_filename, dict_list, delimiter, verbose=False):
    """Write rows as CSV with a header line; no file is written for no rows."""
    if not dict_list:
        if verbose:
            print(f'Not writing {output_filename}; no lines to write')
        return
    with open(output_filename, 'w', newline='') as f:
        dict_writer = csv.DictWriter(f, fieldnames=list(dict_list[0].keys()), dialect=csv.excel,
                                     delimiter=delimiter)
        dict_writer.writeheader()
        dict_writer.writerows(dict_list)
    if verbose:
        print(f'Wrote {output_filename}')


def build_parser():
    parser = argparse.ArgumentParser(
        prog='parse_log.py',
        description='Parse a Caffe training log into two CSV files containing training and testing '
                    'information')
    parser.add_argument('logfile_path', help='Path to log file')
    parser.add_argument('output_dir', help='Directory in which to place output CSV files')
    parser.add_argument('--verbose', action='store_true', help='Print some extra info (e.g., output filenames)')
    parser.add_argument('--delimiter', default=',', type=_delimiter,
                        help="Column delimiter in output files (default: '%(default)s')")
    return parser


def _delimiter(text):
    if len(text) != 1:
        raise argparse.ArgumentTypeError(f"the delimiter must be one character, not {text!r}")
    return text


def run(args):
    """Parse the log and write its CSV files."""
    train_dict_list, test_dict_list = parse_log(args.logfile_path)
    save_csv_files(args.logfile_path, args.output_dir, train_dict_list, test_dict_list,
                   delimiter=args.delimiter, verbose=args.verbose)
    return 0
