"""Reading package release numbers: the onnxruntime overload gate and the TensorRT plan share it."""

from __future__ import annotations

import pytest

from odexport._versions import release_numbers, version_at_least


@pytest.mark.parametrize("text, numbers", [
    ("10.13.0.35", (10, 13, 0, 35)),
    ("11.0.0rc1", (11, 0, 0)),
    ("1.27.0.dev20250101", (1, 27, 0)),
    ("2.13.0+cpu", (2, 13, 0)),
    ("1.31.1", (1, 31, 1)),
    (" 10 ", (10,)),
    ("unknown", ()),
    ("", ()),
])
def test_release_numbers(text, numbers):
    assert release_numbers(text) == numbers


@pytest.mark.parametrize("version, minimum, expected", [
    ("1.27.0", (1, 27), True),
    ("1.26.2", (1, 27), False),
    ("1.3.0", (1, 27), False),  # compared as numbers, not text
    ("2.0", (1, 27), True),
    ("10", (10, 0), True),
    ("1.27.0rc2", (1, 27), True),
    ("unknown", (0,), False),  # unreadable: no minimum is assumed met
    ((10, 12, 0), (10, 12), True),
])
def test_version_at_least(version, minimum, expected):
    assert version_at_least(version, minimum) is expected
