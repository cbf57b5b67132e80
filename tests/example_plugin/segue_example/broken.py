"""A plugin module that fails on import, as one with a missing dependency would."""

import segue_example_missing_dependency  # noqa: F401
