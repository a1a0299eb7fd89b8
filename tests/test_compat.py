"""``pyskim.install_caffe_alias()``: opt-in ``import caffe`` for Python-layer modules and pycaffe code.

Each case runs in a fresh interpreter, since the alias changes ``sys.modules``.
"""
import os
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]

PY_LAYER = '''
import caffe   # a pycaffe Python-layer module: it imports "caffe", not pyskim


class TimesTwo(caffe.Layer):
    def setup(self, bottom, top):
        self.factor = float(self.param_str or 2)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.factor * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = self.factor * top[0].diff
'''

NET = """name: 'pylayer' force_backward: true
layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 2 dim: 3 } } }
layer { name: 'two' type: 'Python' bottom: 'data' top: 'two'
  python_param { module: 'times_two' layer: 'TimesTwo' param_str: '3' } }
"""


def run(code, tmp_path, extra_path=()):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*map(str, extra_path), str(ROOT)])
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_alias_gives_pyskim_under_pycaffe_module_names(tmp_path):
    result = run("""
        import logging, sys
        logging.basicConfig(level=logging.INFO)
        import pyskim
        assert "caffe" not in sys.modules          # never implicit
        assert pyskim.install_caffe_alias() is True
        assert pyskim.install_caffe_alias() is True  # idempotent
        import caffe
        import caffe.draw
        import caffe.io
        from caffe import layers as L, params as P
        from caffe.coord_map import crop
        from caffe.proto import caffe_pb2
        assert caffe is pyskim
        assert caffe.io is pyskim.io and caffe.draw is pyskim.pycaffe.draw and crop is pyskim.pycaffe.coord_map.crop
        assert caffe_pb2 is pyskim.proto.caffe_pb2
        assert caffe.TRAIN == caffe_pb2.TRAIN and P.Pooling.MAX == caffe_pb2.PoolingParameter.MAX
        n = caffe.NetSpec()
        n.data = L.Input(shape={"dim": [1, 2]})
        assert "Input" in str(n.to_proto())
        removed = pyskim.pycaffe.compat.uninstall_caffe_alias()
        assert "caffe" in removed and "caffe" not in sys.modules
    """, tmp_path)
    assert "Registered pyskim as 'caffe'" in result.stderr
    assert "caffe.proto.caffe_pb2" in result.stderr


def test_python_layer_module_importing_caffe(tmp_path):
    (tmp_path / "times_two.py").write_text(PY_LAYER)
    (tmp_path / "net.prototxt").write_text(NET)
    run("""
        import numpy as np
        import pyskim
        pyskim.install_caffe_alias()
        net = pyskim.Net("net.prototxt", pyskim.TEST)
        net.blobs["data"].data[...] = np.arange(6).reshape(2, 3)
        out = net.forward()
        np.testing.assert_array_equal(out["two"], 3 * np.arange(6).reshape(2, 3))
    """, tmp_path, extra_path=[tmp_path])


def test_real_caffe_is_left_alone(tmp_path):
    real = tmp_path / "site" / "caffe"
    real.mkdir(parents=True)
    (real / "__init__.py").write_text("REAL = True\n")
    result = run("""
        import logging
        logging.basicConfig(level=logging.INFO)
        import pyskim
        assert pyskim.install_caffe_alias() is False
        import caffe
        assert caffe.REAL and caffe is not pyskim
    """, tmp_path, extra_path=[tmp_path / "site"])
    assert "A real Caffe is importable" in result.stderr
    assert str(real) in result.stderr


def test_force_replaces_a_real_caffe(tmp_path):
    real = tmp_path / "site" / "caffe"
    real.mkdir(parents=True)
    (real / "__init__.py").write_text("REAL = True\n")
    run("""
        import pyskim
        assert pyskim.install_caffe_alias(force=True) is True
        import caffe
        assert caffe is pyskim
    """, tmp_path, extra_path=[tmp_path / "site"])


def test_already_imported_real_caffe_is_left_alone(tmp_path):
    run("""
        import sys, types
        fake = types.ModuleType("caffe")
        sys.modules["caffe"] = fake
        import pyskim
        assert pyskim.install_caffe_alias() is False
        assert sys.modules["caffe"] is fake
    """, tmp_path)
