"""``caffe.layer_type_list()``, re-expressing BVLC ``python/caffe/test/test_layer_type_list.py``."""
import pyskim as caffe


def test_standard_types():
    for type_name in ["Data", "Convolution", "InnerProduct"]:
        assert type_name in caffe.layer_type_list(), f"{type_name} not in layer_type_list()"


def test_python_layer_and_sorted():
    types = caffe.layer_type_list()
    assert "Python" in types
    assert types == sorted(types) and len(types) == len(set(types))
