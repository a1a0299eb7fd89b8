"""A binary caffemodel's weights, read one blob at a time (Caffe's ``CopyTrainedLayersFromBinaryProto``).

Parsing a whole caffemodel holds the file's bytes, the parsed message and, while copying, an array of
each blob: three copies of every weight. :class:`CaffemodelWeights` walks the protobuf wire format of
the file instead (a field is a varint key ``number << 3 | wire type``; messages and packed numbers
are length-delimited): it parses everything but the packed ``data`` / ``double_data`` of each blob
with protobuf, as a *skeleton* NetParameter that says where those values are in the file, upgrades
the skeleton like any caffemodel (:func:`~pyskim.io.upgrade.upgrade_net`), and later reads each
blob's values straight from the file into the array they belong in. Blob diffs (``snapshot_diff``)
are checked and skipped: loading weights never reads them.

Every check of the whole-file path holds: a truncated or foreign file, or a text field that is not
UTF-8, is a :class:`~pyskim.errors.ModelFileError` naming the file, with the same message. A V0 net
(layers inside ``layers { layer { ... } }``) keeps its values in the skeleton: its upgrade rebuilds
the layers, and such files are small.
"""
import sys

import numpy as np
from google.protobuf import message as pb_message

from ..errors import ModelFileError
from ..proto import caffe_pb2
from .protofiles import HDF5_SIGNATURE, check_utf8_strings, invalid_binary, open_binary
from .upgrade import upgrade_net

#: Top-level NetParameter fields holding layers, with the field number of their ``blobs``:
#: ``layer`` (LayerParameter) and ``layers`` (V1LayerParameter).
_LAYER_FIELDS = {100: 7, 2: 6}
#: BlobProto fields: packed values read in place (number -> bytes per value), and diffs skipped.
_VALUE_FIELDS = {5: 4, 8: 8}
_DIFF_FIELDS = {6: 4, 9: 8}
_VARINT, _FIXED64, _LENGTH, _GROUP_START, _GROUP_END, _FIXED32 = 0, 1, 2, 3, 4, 5
#: Values converted per step when a blob is stored as doubles.
_DOUBLE_CHUNK = 1 << 20


def _varint_bytes(value):
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class _Wire:
    """Sequential reading of the wire format from an open file, with the position kept."""

    def __init__(self, f, path, size):
        self.f, self.path, self.size, self.pos = f, path, size, 0

    def fail(self, detail):
        raise invalid_binary(self.path, "NetParameter", f"{detail} at byte {self.pos}")

    def read(self, n, end):
        if n > end - self.pos:
            self.fail(f"a field of {n} bytes runs past the end of its message")
        data = self.f.read(n)
        self.pos += n
        return data

    def skip(self, n, end):
        if n > end - self.pos:
            self.fail(f"a field of {n} bytes runs past the end of its message")
        self.f.seek(n, 1)
        self.pos += n

    def varint(self, end):
        """(value, its raw bytes)."""
        raw = bytearray()
        while True:
            byte = self.read(1, end)
            raw += byte
            if not byte[0] & 0x80:
                break
            if len(raw) == 10:
                self.fail("a varint longer than 10 bytes")
        value = 0
        for shift, b in enumerate(raw):
            value |= (b & 0x7F) << (7 * shift)
        return value, bytes(raw)

    def raw_field(self, key, end):
        """The payload bytes of a field with ``key`` (already read) that is copied as it is."""
        wire_type = key & 7
        if wire_type == _VARINT:
            return self.varint(end)[1]
        if wire_type == _FIXED64:
            return self.read(8, end)
        if wire_type == _FIXED32:
            return self.read(4, end)
        if wire_type == _LENGTH:
            length, raw = self.varint(end)
            return raw + self.read(length, end)
        if wire_type == _GROUP_START:
            return self._group(end)
        self.fail(f"a field with wire type {wire_type}")

    def _group(self, end):
        """A group's bytes up to its end key, nested groups included (no recursion: depth is data)."""
        out, depth = bytearray(), 1
        while depth:
            key, raw = self.varint(end)
            out += raw
            if key & 7 == _GROUP_END:
                depth -= 1
            elif key & 7 == _GROUP_START:
                depth += 1
            else:
                out += self.raw_field(key, end)
        return bytes(out)


class BlobValues:
    """One blob's values: in ``proto`` (a BlobProto; its shape fields always are), or in segments
    ``(offset, bytes)`` of ``file`` holding packed little-endian floats (``data``) or doubles
    (``double_data``). As Caffe, ``data`` is used when it holds any value, else ``double_data``."""

    def __init__(self, proto, file=None, data_segments=(), double_segments=()):
        self.proto, self._file = proto, file
        self._data, self._double = list(data_segments), list(double_segments)

    @property
    def count(self):
        """How many values the blob holds."""
        floats = len(self.proto.data) + sum(n for _, n in self._data) // 4
        return floats or len(self.proto.double_data) + sum(n for _, n in self._double) // 8

    def read_into(self, out):
        """Copy the values into ``out`` (a float32 array of :attr:`count` elements, C-contiguous)."""
        flat = out.reshape(-1)
        if len(self.proto.data):
            flat[...] = np.asarray(self.proto.data, np.float32)
        elif self._data:
            start = 0
            for offset, nbytes in self._data:
                self._file.seek(offset)
                got = self._file.readinto(memoryview(flat[start:start + nbytes // 4]).cast("B"))
                self._check_read(got, nbytes)
                start += nbytes // 4
            if sys.byteorder == "big":
                flat.byteswap(inplace=True)
        elif len(self.proto.double_data):
            flat[...] = np.asarray(self.proto.double_data, np.float32)
        else:
            start = 0
            for offset, nbytes in self._double:
                self._file.seek(offset)
                for done in range(0, nbytes // 8, _DOUBLE_CHUNK):
                    n = min(_DOUBLE_CHUNK, nbytes // 8 - done)
                    chunk = self._file.read(8 * n)
                    self._check_read(len(chunk), 8 * n)
                    flat[start:start + n] = np.frombuffer(chunk, "<f8")
                    start += n

    def _check_read(self, got, expected):
        if got != expected:
            raise ModelFileError(f"{self._file.name}: the file changed while its weights were read")


class CaffemodelWeights:
    """A binary caffemodel opened for copying its weights (see the module docstring)::

        with CaffemodelWeights(path) as weights:
            for layer, blobs in weights.layers():     # upgraded LayerParameter, [BlobValues]
                ...
    """

    def __init__(self, path):
        self.path = str(path)
        self._file = open_binary(path)
        try:
            if self._file.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                raise ModelFileError(f"{path} is an HDF5 file, not a binary NetParameter")
            self._file.seek(0, 2)
            size = self._file.tell()
            self._file.seek(0)
            skeleton, self._segments = self._walk(_Wire(self._file, self.path, size))
            self.net, self._has_v0 = self._parse(skeleton)
        except BaseException:
            self._file.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()

    def layers(self):
        """Per layer of the upgraded net: (its LayerParameter, a :class:`BlobValues` per blob). The
        values of a V0 net are in the protos; otherwise the i-th layer with blobs is the i-th in the
        file (Caffe's upgrades keep every layer's blobs in order and add only blob-less layers)."""
        in_file = iter(self._segments) if not self._has_v0 else None
        for layer in self.net.layer:
            if in_file is None or not len(layer.blobs):
                yield layer, [BlobValues(proto) for proto in layer.blobs]
                continue
            segments = next(in_file)
            yield layer, [BlobValues(proto, self._file, *where) for proto, where in zip(layer.blobs, segments)]

    def _parse(self, skeleton):
        """The upgraded NetParameter of the skeleton, and whether it was a V0 net."""
        net = caffe_pb2.NetParameter()
        try:
            net.ParseFromString(skeleton)
        except (pb_message.DecodeError, RuntimeError, ValueError) as e:
            raise invalid_binary(self.path, "NetParameter", e) from None
        check_utf8_strings(self.path, net)
        has_v0 = any(entry.HasField("layer") for entry in net.layers)
        upgrade_net(net, source=self.path, strict=False)
        return net, has_v0

    # -- the wire walk -------------------------------------------------------------------------------
    def _walk(self, wire):
        """(skeleton bytes, per layer with blobs: per blob its (data segments, double segments))."""
        skeleton, segments = bytearray(), []
        while wire.pos < wire.size:
            key, raw_key = wire.varint(wire.size)
            blobs_field = _LAYER_FIELDS.get(key >> 3)
            if blobs_field is None or key & 7 != _LENGTH:
                skeleton += raw_key + wire.raw_field(key, wire.size)
                continue
            length = wire.varint(wire.size)[0]
            layer, blobs = self._walk_layer(wire, wire.pos + length, blobs_field)
            skeleton += raw_key + _varint_bytes(len(layer)) + layer
            if blobs:
                segments.append(blobs)
        return bytes(skeleton), segments

    def _walk_layer(self, wire, end, blobs_field):
        skeleton, blobs = bytearray(), []
        if end > wire.size:
            wire.fail("a layer runs past the end of the file")
        while wire.pos < end:
            key, raw_key = wire.varint(end)
            if key >> 3 != blobs_field or key & 7 != _LENGTH:
                skeleton += raw_key + wire.raw_field(key, end)
                continue
            length = wire.varint(end)[0]
            if length > end - wire.pos:
                wire.fail("a blob runs past the end of its layer")
            blob, where = self._walk_blob(wire, wire.pos + length)
            skeleton += raw_key + _varint_bytes(len(blob)) + blob
            blobs.append(where)
        return bytes(skeleton), blobs

    def _walk_blob(self, wire, end):
        """A BlobProto's skeleton and (data segments, double segments). A value field that also has
        unpacked values stays in the skeleton whole, in file order, for protobuf to join."""
        pieces, unpacked = [], set()
        while wire.pos < end:
            key, raw_key = wire.varint(end)
            number, wire_type = key >> 3, key & 7
            itemsize = _VALUE_FIELDS.get(number) or _DIFF_FIELDS.get(number)
            if itemsize is None or wire_type != _LENGTH:
                if number in _VALUE_FIELDS:
                    unpacked.add(number)
                pieces.append(raw_key + wire.raw_field(key, end))
                continue
            length = wire.varint(end)[0]
            if length % itemsize:
                wire.fail(f"packed values of {length} bytes, not a multiple of {itemsize}")
            if number in _VALUE_FIELDS:
                pieces.append((number, raw_key, wire.pos, length))
            wire.skip(length, end)
        skeleton, where = bytearray(), {number: [] for number in _VALUE_FIELDS}
        for piece in pieces:
            if isinstance(piece, bytes):
                skeleton += piece
                continue
            number, raw_key, offset, length = piece
            if number in unpacked:
                self._file.seek(offset)
                skeleton += raw_key + _varint_bytes(length) + self._file.read(length)
            else:
                where[number].append((offset, length))
        self._file.seek(wire.pos)
        return bytes(skeleton), (where[5], where[8])

