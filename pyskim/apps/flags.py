"""gflags-style command lines on top of argparse, so pyskim's tools take Caffe's flag spellings.

Caffe's tools parse flags with gflags, which accepts ``-name`` and ``--name``, ``-name=value`` and
``-name value`` (not for booleans), ``-noname`` / ``-name=false`` for booleans, flags mixed with
positional arguments, and ``--`` to end the flags. :func:`parse` rewrites such an argv into
argparse's spelling and parses it with a parser whose flags were declared with :func:`define`.
"""
import argparse
import sys

_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


def parse_bool(text):
    """A gflags boolean value (true/false, t/f, yes/no, y/n, 1/0; any case)."""
    lowered = str(text).lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean value {text!r}")


def new_parser(prog, usage_message, positionals=()):
    """An ArgumentParser for a gflags tool (usage text printed with ``-help``), taking the positional
    arguments ``positionals`` (see :func:`add_positionals`); its flags are declared with :func:`define`."""
    parser = argparse.ArgumentParser(prog=prog, description=usage_message,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.gflags_bools = set()
    parser.gflags_values = set()
    add_positionals(parser, positionals)
    return parser


def add_positionals(parser, positionals):
    """Declare the required positional arguments ``positionals``: ``(name, help)`` pairs in
    command-line order."""
    for name, help_text in positionals:
        parser.add_argument(name, help=help_text)


def define(parser, name, default, help_text):
    """Declare flag ``name``; its type (bool, int, float or str) is that of ``default``."""
    if isinstance(default, bool):
        parser.add_argument(f"--{name}", nargs="?", const=True, default=default, type=parse_bool, help=help_text)
        parser.gflags_bools.add(name)
    else:
        parser.add_argument(f"--{name}", default=default, type=type(default), help=help_text)
        parser.gflags_values.add(name)


def to_argparse(argv, bool_flags, value_flags=()):
    """Rewrite gflags spellings into argparse ones: ``--name[=value]``; unknown flags pass through
    as ``--name`` so that argparse reports them."""
    out = []
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--":
            out.append("--")
            out.extend(argv[i + 1:])
            break
        if len(arg) < 2 or arg[0] != "-" or _is_number(arg):
            out.append(arg)
            continue
        body = arg[2:] if arg.startswith("--") else arg[1:]
        name, eq, value = body.partition("=")
        if name in ("h", "help", "helpshort", "helpfull"):
            out.append("--help")
        elif name not in bool_flags and name not in value_flags and name.startswith("no") \
                and name[2:] in bool_flags and not eq:
            out.append(f"--{name[2:]}=false")
        elif name in bool_flags:
            out.append(f"--{name}={value if eq else 'true'}")   # a boolean never takes the next word
        else:
            out.append(f"--{name}={value}" if eq else f"--{name}")
    return out


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse(parser, argv=None):
    """Parse a gflags-style ``argv`` (default ``sys.argv[1:]``) with ``parser``; flags may come
    before, between or after the positional arguments."""
    argv = to_argparse(sys.argv[1:] if argv is None else argv, parser.gflags_bools, parser.gflags_values)
    if "--" in argv:      # argparse mixes badly with "--": positionals then go after it only
        return parser.parse_args(argv)
    return parser.parse_intermixed_args(argv)


def is_gflags_parser(parser):
    """Was ``parser`` made by :func:`new_parser` (so its command line takes gflags' spellings)?"""
    return hasattr(parser, "gflags_bools")


def parse_command_line(parser, argv=None):
    """Parse ``argv`` the way ``parser``'s tool takes it: gflags' spellings (:func:`parse`) for a
    Caffe tool's parser, argparse's own for a Python script's."""
    if is_gflags_parser(parser):
        return parse(parser, argv)
    return parser.parse_args(sys.argv[1:] if argv is None else argv)
