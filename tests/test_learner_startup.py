"""A learner rank imports DeepSpeed with mlflow hidden (its autotuner would load mlflow on
import), and the module imports normally again afterwards. Milliseconds, no Ray actor."""
from __future__ import annotations

import sys

import pytest

from actors.learner import _hidden_module


def test_hidden_module_fails_inside_and_imports_after():
    name = "json.tool"  # stdlib, cheap, and not imported by the test run
    sys.modules.pop(name, None)
    with _hidden_module(name):
        with pytest.raises(ImportError):
            __import__(name)
    assert name not in sys.modules
    assert __import__(name) and name in sys.modules


def test_an_imported_module_is_left_alone():
    import json

    with _hidden_module("json"):
        import json as again
    assert again is json and sys.modules["json"] is json
