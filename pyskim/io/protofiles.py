"""Reading and writing protobuf files (text prototxt and binary), with errors that name the file.

Mirrors Caffe's ``ReadProtoFromTextFile`` / ``ReadProtoFromBinaryFile`` and their writers; writes go
through :func:`~pyskim.io.files.atomic_write` (temp file + rename, mode 0666 & ~umask, a failure is a
:class:`~pyskim.errors.FileWriteError`), so an interrupted write never destroys an existing file.
"""
from google.protobuf import message as pb_message
from google.protobuf import text_format

from ..errors import ModelFileError, ParseError
from .files import atomic_write

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def open_binary(path):
    """``path`` opened for reading bytes; failing is a ModelFileError "Could not open file ..."."""
    try:
        return open(path, "rb")
    except (OSError, ValueError) as e:      # ValueError: a NUL byte in the path
        raise ModelFileError(f"Could not open file {path}: {getattr(e, 'strerror', None) or e}") from None


def _read_bytes(path):
    with open_binary(path) as f:
        try:
            return f.read()
        except OSError as e:                # a failing read (EIO, ...)
            raise ModelFileError(f"Could not open file {path}: {e.strerror or e}") from None


def invalid_binary(path, message_name, detail):
    """The ModelFileError for a file that does not parse as a binary ``message_name``."""
    return ModelFileError(f"{path} is not a valid binary {message_name} (truncated or another format): {detail}")


def check_utf8_strings(path, message):
    """ModelFileError naming ``path`` and the field when a text field of ``message`` holds bytes
    that are not UTF-8 (:func:`find_non_utf8_string`)."""
    bad = find_non_utf8_string(message)
    if bad is not None:
        where, value = bad
        raise ModelFileError(f"{path}: corrupt {message.DESCRIPTOR.name}: the text field {where} holds "
                             f"bytes that are not UTF-8 ({value[:40]!r})")


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
    """Parse a binary protobuf file into ``message``; truncated or foreign files, and text fields
    (layer and blob names, ...) holding bytes that are not UTF-8, give ModelFileError."""
    data = _read_bytes(path)
    if data.startswith(HDF5_SIGNATURE):
        raise ModelFileError(f"{path} is an HDF5 file, not a binary {message.DESCRIPTOR.name}")
    try:
        message.ParseFromString(data)
    except (pb_message.DecodeError, RuntimeError, ValueError) as e:
        raise invalid_binary(path, message.DESCRIPTOR.name, e) from None
    check_utf8_strings(path, message)
    return message


def find_non_utf8_string(message, where=""):
    """The first string field of ``message`` (searched depth first) whose bytes are not valid UTF-8,
    as ``(path like "layers[1].top[0]", raw bytes)``, or None. Caffe's C++ protobuf keeps such bytes
    as they are; Python's protobuf hands them out as ``bytes`` where a ``str`` is expected (or fails
    when they are copied), so pyskim refuses the file when it is read."""
    for field, value in message.ListFields():
        is_message = field.type in (field.TYPE_MESSAGE, field.TYPE_GROUP)
        if not is_message and field.type != field.TYPE_STRING:
            continue                    # numbers (the weights) and bytes: nothing to check
        name = f"{where}.{field.name}" if where else field.name
        items = ([(f"{name}[{i}]", item) for i, item in enumerate(value)] if field.is_repeated
                 else [(name, value)])
        for item_name, item in items:
            found = find_non_utf8_string(item, item_name) if is_message else (
                (item_name, item) if isinstance(item, bytes) else None)
            if found is not None:
                return found
    return None


def is_hdf5(path):
    try:
        with open(path, "rb") as f:
            return f.read(8) == HDF5_SIGNATURE
    except (OSError, ValueError):
        return False


def write_text(path, message):
    atomic_write(path, text_format.MessageToString(message), mode="w")


def write_binary(path, message):
    atomic_write(path, message.SerializeToString())
