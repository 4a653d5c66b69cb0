import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
# Show diffs for the transcript harness's assertions too.
pytest.register_assert_rewrite("smtp_harness")
