"""Reading and writing protobuf files (text prototxt and binary), with errors that name the file.

Mirrors Caffe's ``ReadProtoFromTextFile`` / ``ReadProtoFromBinaryFile`` and their writers; writes are
atomic (temp file + rename) so an interrupted write never destroys an existing file.
"""
import os
import tempfile

from google.protobuf import message as pb_message
from google.protobuf import text_format

from ..errors import ModelFileError, ParseError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _read_bytes(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except (OSError, ValueError) as e:      # ValueError: a NUL byte in the path
        raise ModelFileError(f"Could not open file {path}: {getattr(e, 'strerror', None) or e}") from None


def parse_text(text, message, source="<string>"):
    """Merge prototxt ``text`` into ``message``; syntax errors name source, line and column."""
    try:
        text_format.Merge(text, message, allow_unknown_extension=False)
    except text_format.ParseError as e:
        line, col = e.GetLine(), e.GetColumn()
        where = f"{source}:{line}:{col}" if line else source
        detail = str(e).split(" : ", 1)[-1]
        raise ParseError(f"{where}: cannot parse as {message.DESCRIPTOR.name}: {detail}") from None
    return message


def read_text(path, message):
    """Parse a prototxt file into ``message`` (an instance, returned filled)."""
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError(f"{path}: not a text prototxt (binary content); is it a .caffemodel?") from None
    return parse_text(text, message, source=str(path))


def read_binary(path, message):
    """Parse a binary protobuf file into ``message``; truncated or foreign files give ModelFileError."""
    data = _read_bytes(path)
    if data.startswith(HDF5_SIGNATURE):
        raise ModelFileError(f"{path} is an HDF5 file, not a binary {message.DESCRIPTOR.name}")
    try:
        message.ParseFromString(data)
    except (pb_message.DecodeError, RuntimeError, ValueError) as e:
        raise ModelFileError(f"{path} is not a valid binary {message.DESCRIPTOR.name} "
                             f"(truncated or another format): {e}") from None
    return message


def is_hdf5(path):
    try:
        with open(path, "rb") as f:
            return f.read(8) == HDF5_SIGNATURE
    except (OSError, ValueError):
        return False


def atomic_write(path, data, mode="wb"):
    """Write ``data`` to ``path`` through a temp file in the same folder and an atomic rename."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp_" + os.path.basename(path), dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path, message):
    atomic_write(path, text_format.MessageToString(message), mode="w")


def write_binary(path, message):
    atomic_write(path, message.SerializeToString())
