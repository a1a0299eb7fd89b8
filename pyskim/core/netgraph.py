"""NetParameter rewriting before a Net is built: NetState filtering and Split insertion.

Mirrors Caffe's ``Net::FilterNet`` / ``Net::StateMeetsRule`` and ``util/insert_splits.cpp``.
"""
from collections import defaultdict

from ..errors import NetError
from ..proto import caffe_pb2


def state_meets_rule(state, rule):
    """Whether a NetState satisfies one NetStateRule (phase, level range, stages)."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    return not any(s in stages for s in rule.not_stage)


def filter_net(param, state):
    """Copy of ``param`` keeping only the layers whose include/exclude rules admit ``state``."""
    filtered = caffe_pb2.NetParameter()
    filtered.CopyFrom(param)
    del filtered.layer[:]
    for layer in param.layer:
        if len(layer.include) and len(layer.exclude):
            raise NetError(f"layer '{layer.name}' specifies both include and exclude; only one may be given")
        if len(layer.include):
            keep = any(state_meets_rule(state, rule) for rule in layer.include)
        else:
            keep = not any(state_meets_rule(state, rule) for rule in layer.exclude)
        if keep:
            filtered.layer.add().CopyFrom(layer)
    return filtered


def split_layer_name(layer_name, blob_name, top_index):
    return f"{blob_name}_{layer_name}_{top_index}_split"


def split_blob_name(layer_name, blob_name, top_index, split_index):
    return f"{blob_name}_{layer_name}_{top_index}_split_{split_index}"


def insert_splits(param):
    """Copy of ``param`` where every top consumed more than once (a loss counts as a consumer) feeds
    a Split layer whose tops replace it, named exactly as Caffe names them."""
    last_producer = {}
    source_of_bottom = {}
    consumers = defaultdict(int)
    loss_weight_of_top = {}
    for i, layer in enumerate(param.layer):
        for j, blob in enumerate(layer.bottom):
            if blob not in last_producer:
                raise NetError(f"Unknown bottom blob '{blob}' (layer '{layer.name}', bottom index {j})")
            source_of_bottom[(i, j)] = last_producer[blob]
            consumers[last_producer[blob]] += 1
        for j, blob in enumerate(layer.top):
            last_producer[blob] = (i, j)
        for j in range(min(len(layer.loss_weight), len(layer.top))):
            top_index = last_producer[layer.top[j]]
            loss_weight_of_top[top_index] = layer.loss_weight[j]
            if layer.loss_weight[j]:
                consumers[top_index] += 1

    result = caffe_pb2.NetParameter()
    result.CopyFrom(param)
    del result.layer[:]
    next_split = defaultdict(int)
    for i, original in enumerate(param.layer):
        layer = result.layer.add()
        layer.CopyFrom(original)
        for j, blob in enumerate(layer.bottom):
            top_index = source_of_bottom[(i, j)]
            if consumers[top_index] > 1:
                producer = param.layer[top_index[0]].name
                layer.bottom[j] = split_blob_name(producer, blob, top_index[1], next_split[top_index])
                next_split[top_index] += 1
        for j, blob in enumerate(layer.top):
            count = consumers[(i, j)]
            if count <= 1:
                continue
            loss_weight = loss_weight_of_top.get((i, j), 0.0)
            split = result.layer.add()
            split.name = split_layer_name(layer.name, blob, j)
            split.type = "Split"
            split.bottom.append(blob)
            for k in range(count):
                split.top.append(split_blob_name(layer.name, blob, j, k))
                if loss_weight:
                    split.loss_weight.append(loss_weight if k == 0 else 0.0)
            if loss_weight:
                del layer.loss_weight[:]
                next_split[(i, j)] += 1
    return result
