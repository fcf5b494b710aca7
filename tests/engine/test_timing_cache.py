"""The timing-cache file life cycle: created, reused, updated, replaced (the bytes are TensorRT's, opaque here)."""

from __future__ import annotations

import pytest

from odexport.engine.timing_cache import CREATED, REPLACED, REUSED, UPDATED, TimingCacheFile
from odexport.errors import InputError


def test_created_when_missing(tmp_path):
    cache = TimingCacheFile(tmp_path / "trt.cache")
    assert cache.read() == b""
    assert cache.write(b"tactics v1") == CREATED
    assert (tmp_path / "trt.cache").read_bytes() == b"tactics v1"


def test_reused_when_the_build_adds_nothing(tmp_path):
    (tmp_path / "trt.cache").write_bytes(b"tactics v1")
    cache = TimingCacheFile(tmp_path / "trt.cache")
    assert cache.read() == b"tactics v1"
    assert cache.write(b"tactics v1") == REUSED
    assert (tmp_path / "trt.cache").read_bytes() == b"tactics v1"


def test_updated_when_the_build_adds_measurements(tmp_path):
    (tmp_path / "trt.cache").write_bytes(b"tactics v1")
    cache = TimingCacheFile(tmp_path / "trt.cache")
    cache.read()
    assert cache.write(b"tactics v1 + v2") == UPDATED
    assert (tmp_path / "trt.cache").read_bytes() == b"tactics v1 + v2"
    assert [p.name for p in tmp_path.iterdir()] == ["trt.cache"]  # no temporary file left behind


def test_replaced_when_tensorrt_rejects_it(tmp_path):
    (tmp_path / "trt.cache").write_bytes(b"from another TensorRT")
    cache = TimingCacheFile(tmp_path / "trt.cache")
    cache.read()
    cache.reject()
    assert cache.write(b"fresh") == REPLACED
    assert (tmp_path / "trt.cache").read_bytes() == b"fresh"


def test_bad_paths(tmp_path):
    with pytest.raises(InputError, match="not a file"):
        TimingCacheFile(tmp_path).read()
    with pytest.raises(InputError, match="does not exist"):
        TimingCacheFile(tmp_path / "absent" / "trt.cache").read()


def test_state_before_write_is_a_bug(tmp_path):
    cache = TimingCacheFile(tmp_path / "trt.cache")
    cache.read()
    with pytest.raises(RuntimeError):
        cache.state()
