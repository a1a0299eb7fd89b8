"""Upgrade an old-format caffemodel (V0 / V1 layers, deprecated fields) to the current format."""
from ..io.protofiles import read_binary, write_binary
from ..io.upgrade import net_needs_upgrade, upgrade_net
from ..proto import caffe_pb2


def upgrade_caffemodel(in_path, out_path):
    """Read ``in_path``, apply every needed upgrade (the path of ``read_net_binary``) and write the
    result to ``out_path`` (written even when nothing changed). Returns True when an upgrade applied.
    A net that cannot be upgraded raises NetError naming the layer."""
    net = read_binary(in_path, caffe_pb2.NetParameter())
    needed = net_needs_upgrade(net)
    if needed:
        upgrade_net(net, source=str(in_path), strict=False)
    write_binary(out_path, net)
    return needed
