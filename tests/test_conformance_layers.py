"""Every layer and whole-net case of ../shared/conformance: forward and backward equal Caffe's."""
import pytest
from conformance import manifest_cases, run_layer_case

NEEDS_SHARED = True
LAYER_CASES = manifest_cases("layer")


@pytest.mark.parametrize("case", LAYER_CASES, ids=[c["name"] for c in LAYER_CASES])
def test_layer_case(case):
    run_layer_case(case)
