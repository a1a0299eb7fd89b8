"""``pyskim.install_caffe_alias()``: opt-in ``import caffe`` for Python-layer modules and pycaffe code,
and the switch outside the code: ``PYSKIM_CAFFE_ALIAS=1`` read by ``pyskim-caffe-alias.pth``.

Each case runs in a fresh interpreter, since the alias changes ``sys.modules``.
"""
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

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


def run(code, tmp_path, extra_path=(), check=True, **environ):
    env = dict(os.environ)
    env.pop("PYSKIM_CAFFE_ALIAS", None)
    env.update(environ)
    env["PYTHONPATH"] = os.pathsep.join([*map(str, extra_path), str(ROOT)])
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    if check:
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


# -- PYSKIM_CAFFE_ALIAS and the .pth file ---------------------------------------------------------------

PTH = ROOT / "pyskim-caffe-alias.pth"
#: Processes the repository's .pth file as site-packages would (site.addsitedir), then imports caffe.
THROUGH_PTH = """
    import site, sys
    site.addsitedir({site!r})
    assert "pyskim" not in sys.modules            # nothing imported at start-up, even when enabled
    import caffe
    import caffe.proto.caffe_pb2
    print(caffe.__name__, caffe.proto.caffe_pb2.__name__, sys.modules["pyskim"].__spec__.name)
"""


def _site_with_pth(tmp_path):
    site = tmp_path / "site-packages"
    site.mkdir()
    shutil.copy(PTH, site / PTH.name)
    return site


@pytest.mark.parametrize("value", ["1", "true"])
def test_pth_switch_on_gives_pyskim_as_caffe(tmp_path, value):
    site = _site_with_pth(tmp_path)
    result = run(THROUGH_PTH.format(site=str(site)), tmp_path, PYSKIM_CAFFE_ALIAS=value)
    assert result.stdout.split() == ["pyskim", "pyskim.proto.caffe_pb2", "pyskim"]


@pytest.mark.parametrize("value", [None, "0", ""])
def test_pth_switch_off_by_default(tmp_path, value):
    site = _site_with_pth(tmp_path)
    environ = {} if value is None else {"PYSKIM_CAFFE_ALIAS": value}
    result = run(THROUGH_PTH.format(site=str(site)), tmp_path, check=False, **environ)
    assert result.returncode == 1 and "No module named 'caffe'" in result.stderr


def test_pth_switch_leaves_a_real_caffe_first(tmp_path):
    site = _site_with_pth(tmp_path)
    real = tmp_path / "real" / "caffe"
    real.mkdir(parents=True)
    (real / "__init__.py").write_text("REAL = True\n")
    result = run(f"""
        import site
        site.addsitedir({str(site)!r})
        import caffe
        print(caffe.REAL)
    """, tmp_path, extra_path=[tmp_path / "real"], PYSKIM_CAFFE_ALIAS="1")
    assert result.stdout.split() == ["True"]


def _installed_pth():
    try:
        from importlib.metadata import PackageNotFoundError, files
        listed = files("pyskim") or []
    except PackageNotFoundError:
        return None
    return next((f.locate() for f in listed if f.name == PTH.name), None)


def test_installed_pth_switch(tmp_path):
    """After ``pip install -e .`` (or a wheel), the switch works from site-packages: ``python -c
    "import caffe"`` gives pyskim with PYSKIM_CAFFE_ALIAS=1 only."""
    installed = _installed_pth()
    if installed is None:
        pytest.skip("pyskim is not installed with pyskim-caffe-alias.pth (installed before it existed: "
                    "run pip install -e . again)")
    assert pathlib.Path(installed).read_text() == PTH.read_text()
    code = "import caffe; print(caffe.__name__)"
    result = run(code, tmp_path, PYSKIM_CAFFE_ALIAS="1")
    assert result.stdout.split() == ["pyskim"]
    result = run(code, tmp_path, check=False)
    assert result.returncode == 1 and "No module named 'caffe'" in result.stderr
