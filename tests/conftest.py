import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def lite0():
    """The real default model (bundled ImageNet weights), loaded once."""
    from unioncam.models import load

    return load("efficientnet_lite0")
