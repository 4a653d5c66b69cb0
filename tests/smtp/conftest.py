import pytest

# Show diffs for the transcript harness's assertions too.
pytest.register_assert_rewrite("smtp_harness")
