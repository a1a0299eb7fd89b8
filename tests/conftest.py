import pathlib

import pytest

#: Read-only ground truth made by the real BVLC Caffe, checked out next to the repository.
SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"
NO_SHARED_REASON = (f"needs ../shared (BVLC Caffe's ground truth next to the repository), "
                    f"not found at {SHARED}")


def pytest_collection_modifyitems(config, items):
    """Without ``../shared`` (a plain clone), skip with one reason every test that reads it: those
    asking for the ``shared_dir`` fixture (directly or through another fixture) and those in modules
    that declare ``NEEDS_SHARED = True``. The mark goes first, so that a test parametrized over
    ``../shared``'s contents (an empty parameter set here) reports this reason, not pytest's own."""
    if SHARED.is_dir():
        return
    skip = pytest.mark.skip(reason=NO_SHARED_REASON)
    for item in items:
        if "shared_dir" in getattr(item, "fixturenames", ()) or getattr(item.module, "NEEDS_SHARED", False):
            item.add_marker(skip, append=False)


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    """Read-only ground-truth data, checked out next to the repository (``../shared``)."""
    return SHARED


@pytest.fixture(scope="module")
def one_kernel_thread():
    """pyskim's kernels on one thread for a module's tests (small runs on a machine that may be busy),
    the previous count restored after them; a module asks with
    ``pytestmark = pytest.mark.usefixtures("one_kernel_thread")``."""
    from pyskim.kernels.threads import get_num_threads, set_num_threads
    previous = get_num_threads()
    set_num_threads(1)
    yield
    set_num_threads(previous)


@pytest.fixture
def no_auto_trials():
    """AUTO decided by the performance model alone for a test (no timing of close calls, which would
    make the mode a test sees depend on this machine's timings), the setting restored after it; a
    module asks with ``pytestmark = pytest.mark.usefixtures("no_auto_trials")``."""
    from pyskim.sparse.trial import set_auto_trials
    previous = set_auto_trials(False)
    yield
    set_auto_trials(previous)


@pytest.fixture
def sparse_wins_profile():
    """The performance model on ``one_layer_nets.SPARSE_WINS_PROFILE`` for a test (AUTO's picks then do
    not depend on the machine running it); a module asks with
    ``pytestmark = pytest.mark.usefixtures("sparse_wins_profile")``."""
    from one_layer_nets import SPARSE_WINS_PROFILE

    from pyskim.perf.profile import use_profile
    with use_profile(SPARSE_WINS_PROFILE):
        yield
