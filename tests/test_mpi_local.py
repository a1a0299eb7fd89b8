"""The parts of data-parallel training that need no MPI. The data hook (``pyskim.data.shard``): rank
r of N reads global batches r, r + N, ... of the stream one process reads, for LMDB (Data), image
lists (ImageData, also shuffled) and HDF5 files (HDF5Data, also shuffled), across the wrap-around.
The launcher variables that say whether a process was started by mpirun, and each rank's share of
the cores."""
import os

import h5py
import numpy as np
import pytest
from google.protobuf import text_format

import pyskim as caffe
from pyskim.data import imgproc
from pyskim.data.db import LMDBWriter
from pyskim.data.shard import Shard, data_shard, use_data_shard
from pyskim.proto import caffe_pb2
from pyskim.solvers.distributed import launched_world_size, threads_per_process

RECORDS = 11          # not a multiple of any batch x ranks used here: the shares cross the wrap-around


def build(text, rank=0, size=1, seed=None):
    """A TRAIN net of one data layer, built as rank ``rank`` of ``size`` (seeded first when given)."""
    if seed is not None:
        caffe.set_random_seed(seed)
    with use_data_shard(rank, size):
        return caffe.Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffe.TRAIN)


def labels_of(net, batches):
    """The label top of ``batches`` forward passes, one list per batch."""
    out = []
    for _ in range(batches):
        net.forward()
        out.append(net.blobs["label"].data.ravel().astype(int).tolist())
    return out


def expected_share(rank, size, batch, batches, records=RECORDS):
    """Rank ``rank``'s batches by the rule: its d-th batch is global batch d·size + rank, whose items
    are records k·batch .. k·batch + batch - 1 of the cyclic stream 0, 1, ..., records - 1, 0, ..."""
    return [[((d * size + rank) * batch + j) % records for j in range(batch)] for d in range(batches)]


@pytest.fixture(scope="module")
def lmdb_source(tmp_path_factory):
    path = tmp_path_factory.mktemp("shard") / "lmdb"
    writer = LMDBWriter(path)
    for i in range(RECORDS):
        writer.put(f"{i:08d}", caffe_pb2.Datum(channels=1, height=2, width=2, data=bytes([i] * 4), label=i)
                   .SerializeToString())
    writer.close()
    return path


@pytest.fixture(scope="module")
def image_list(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    lines = []
    for i in range(RECORDS):
        (folder / f"{i}.png").write_bytes(imgproc.encode_png(np.full((3, 3, 1), i, np.uint8)))
        lines.append(f"{i}.png {i}")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def hdf5_list(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hdf5")
    files = []
    for name, rows in (("a.h5", range(6)), ("b.h5", range(6, RECORDS))):
        with h5py.File(folder / name, "w") as f:
            f["data"] = np.array(rows, np.float32).reshape(-1, 1)
            f["label"] = np.array(rows, np.float32)
        files.append(str(folder / name))
    (folder / "list.txt").write_text("\n".join(files) + "\n")
    return folder / "list.txt"


def lmdb_net(source, batch):
    return (f'layer {{ name: "d" type: "Data" top: "data" top: "label" data_param {{ source: "{source}" '
            f'batch_size: {batch} backend: LMDB }} }}')


def image_net(folder, batch, shuffle=False):
    return (f'layer {{ name: "d" type: "ImageData" top: "data" top: "label" image_data_param {{ '
            f'source: "{folder / "list.txt"}" root_folder: "{folder}/" batch_size: {batch} is_color: false '
            f'shuffle: {str(shuffle).lower()} }} }}')


def hdf5_net(source, batch, shuffle=False):
    return (f'layer {{ name: "d" type: "HDF5Data" top: "data" top: "label" hdf5_data_param {{ '
            f'source: "{source}" batch_size: {batch} shuffle: {str(shuffle).lower()} }} }}')


@pytest.mark.parametrize("size, batch", [(2, 3), (3, 2)])
def test_lmdb_ranks_read_their_global_batches(lmdb_source, size, batch):
    for rank in range(size):
        net = build(lmdb_net(lmdb_source, batch), rank, size)
        assert labels_of(net, 6) == expected_share(rank, size, batch, 6)
        pixels = net.blobs["data"].data.reshape(batch, -1)[:, 0].astype(int).tolist()
        assert pixels == expected_share(rank, size, batch, 6)[-1]        # the images travel with their labels


def test_one_process_reads_the_whole_stream(lmdb_source):
    assert data_shard() == Shard(0, 1)
    assert labels_of(build(lmdb_net(lmdb_source, 4)), 5) == expected_share(0, 1, 4, 5)


@pytest.mark.parametrize("size", [2, 3])
def test_image_list_ranks_read_their_global_batches(image_list, size):
    for rank in range(size):
        assert labels_of(build(image_net(image_list, 2), rank, size), 7) == expected_share(rank, size, 2, 7)


@pytest.mark.parametrize("maker, source", [(image_net, "image_list"), (hdf5_net, "hdf5_list")])
def test_shuffled_shares_are_the_single_reader_batches(maker, source, request):
    """With shuffling, every rank shuffles alike (same seed): rank r's d-th batch is the single
    reader's batch d·N + r, over several reshuffled passes; the shares are disjoint per pass."""
    source = request.getfixturevalue(source)
    size, batch, batches = 2, 2, 12
    single = labels_of(build(maker(source, batch, shuffle=True), seed=11), size * batches)
    first_items = [label for labels in single[:5] for label in labels]
    assert sorted(first_items) != first_items                           # it did shuffle
    for rank in range(size):
        share = labels_of(build(maker(source, batch, shuffle=True), rank, size, seed=11), batches)
        assert share == [single[d * size + rank] for d in range(batches)]


def test_hdf5_ranks_read_their_global_batches_across_files(hdf5_list):
    for rank in range(2):
        assert labels_of(build(hdf5_net(hdf5_list, 4), rank, 2), 5) == expected_share(rank, 2, 4, 5)


def test_the_shard_is_taken_at_build_time(lmdb_source):
    with use_data_shard(1, 2):
        net = caffe.Net(text_format.Parse(lmdb_net(lmdb_source, 2), caffe_pb2.NetParameter()), caffe.TRAIN)
        assert data_shard() == Shard(1, 2)
    assert data_shard() == Shard(0, 1)
    assert labels_of(net, 3) == expected_share(1, 2, 2, 3)
    with pytest.raises(ValueError, match="rank 2 is not one of 0..1"):
        Shard(2, 2)


@pytest.mark.parametrize("environ, size", [
    ({}, 1),
    ({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "2"}, 4),           # Open MPI
    ({"PMI_SIZE": "3", "PMI_RANK": "0"}, 3),                                     # MPICH, Intel MPI
    ({"MV2_COMM_WORLD_SIZE": "2"}, 2),                                           # MVAPICH
    ({"PMIX_RANK": "0"}, None),                                                  # PMIx: ask MPI
    ({"OMPI_COMM_WORLD_SIZE": "1", "OMPI_COMM_WORLD_RANK": "0"}, 1),
])
def test_launched_world_size_from_the_launcher_variables(environ, size):
    assert launched_world_size(environ) == size


class NodeOf:
    """A stand-in group whose ranks on this machine run on the given CPU sets."""

    def __init__(self, *cpu_sets):
        self.cpu_sets = cpu_sets

    def gather_on_node(self, value):
        return [value if cpus is None else frozenset(cpus) for cpus in self.cpu_sets]


def test_each_rank_gets_its_share_of_the_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    mine = sorted(os.sched_getaffinity(0))
    assert threads_per_process(NodeOf(None)) == len(mine)                       # alone: all of them
    assert threads_per_process(NodeOf(None, None)) == max(1, len(mine) // 2)    # two ranks, same cores
    assert threads_per_process(NodeOf(None, [max(mine) + 1])) == len(mine)      # the other rank bound elsewhere
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads_per_process(NodeOf(None, None)) == 3                         # as for one process
