"""Batch profiles from options and ONNX inputs (no TensorRT)."""

from __future__ import annotations

import pytest

from odexport.engine.profiles import (
    BatchProfile,
    batch_profiles_from_options,
    onnx_signature,
    parse_profile,
    resolve_profiles,
    select_profile,
)
from odexport.errors import InputError
from tests.engine._onnx import conv_model, two_input_model


def test_parse_profile_forms():
    assert parse_profile("1:8:32") == BatchProfile(1, 8, 32)
    assert parse_profile(" 2 : 4 : 4 ") == BatchProfile(2, 4, 4)
    assert parse_profile("4") == BatchProfile(4, 4, 4)


@pytest.mark.parametrize("text", ["1:8", "a:b:c", "1:2:3:4", "", "1::3"])
def test_parse_profile_rejects_malformed(text):
    with pytest.raises(InputError, match="MIN:OPT:MAX"):
        parse_profile(text)


@pytest.mark.parametrize("text, fragment", [("8:2:1", "not ordered"), ("1:8:4", "not ordered"), ("0:1:2", ">= 1"), ("-1:1:2", ">= 1")])
def test_profile_validation(text, fragment):
    with pytest.raises(InputError, match=fragment):
        parse_profile(text)


def test_no_option_means_the_onnx_decides():
    assert batch_profiles_from_options() is None


@pytest.mark.parametrize(
    "given, expected",
    [
        (dict(min_batch=1, opt_batch=4, max_batch=16), (1, 4, 16)),
        (dict(max_batch=4), (1, 4, 4)),  # opt 8 clamped into [1, 4]
        (dict(max_batch=64), (1, 8, 64)),
        (dict(min_batch=16), (16, 16, 32)),  # opt 8 raised to min
        (dict(min_batch=64), (64, 64, 64)),  # max follows a min above 32
        (dict(opt_batch=48), (1, 48, 48)),  # max follows an opt above 32
        (dict(opt_batch=2), (1, 2, 32)),
    ],
)
def test_missing_bounds_are_filled(given, expected):
    (profile,) = batch_profiles_from_options(**given)
    assert (profile.min, profile.opt, profile.max) == expected


def test_bounds_out_of_order_are_an_error():
    with pytest.raises(InputError, match="not ordered"):
        batch_profiles_from_options(min_batch=8, max_batch=4)
    with pytest.raises(InputError, match=">= 1"):
        batch_profiles_from_options(max_batch=0)


def test_several_profiles_and_conflicts():
    profiles = batch_profiles_from_options(profiles=["1:1:1", "2:8:16", "32"])
    assert [p.text() for p in profiles] == ["1:1:1", "2:8:16", "32:32:32"]
    with pytest.raises(InputError, match="cannot be combined"):
        batch_profiles_from_options(max_batch=8, profiles=["1:2:4"])
    with pytest.raises(InputError, match="twice"):
        batch_profiles_from_options(profiles=["1:2:4", "1:2:4"])


def test_signature_of_a_dynamic_batch_onnx(tmp_path):
    sig = onnx_signature(conv_model(tmp_path / "m.onnx", metadata={"odexport.arch": "tiny"}))
    (inp,) = sig.inputs
    assert inp.name == "input" and inp.dims == ("batch", 3, 8, 8) and inp.dtype == "float32"
    assert inp.batch_is_dynamic and inp.fixed_batch is None
    assert sig.outputs[0].dims == ("batch", 4, 8, 8)
    assert sig.metadata == {"odexport.arch": "tiny"}


def test_default_profile_for_a_dynamic_batch(tmp_path):
    sig = onnx_signature(conv_model(tmp_path / "m.onnx"))
    (shapes,) = resolve_profiles(sig, None)
    assert shapes.batch == BatchProfile(1, 8, 32)
    assert shapes.shapes == {"input": ((1, 3, 8, 8), (8, 3, 8, 8), (32, 3, 8, 8))}
    assert shapes.to_dict()["shapes"]["input"] == {"min": [1, 3, 8, 8], "opt": [8, 3, 8, 8], "max": [32, 3, 8, 8]}


def test_requested_profiles_become_full_shapes(tmp_path):
    sig = onnx_signature(conv_model(tmp_path / "m.onnx"))
    resolved = resolve_profiles(sig, [BatchProfile(1, 1, 1), BatchProfile(2, 4, 8)])
    assert [r.shapes["input"] for r in resolved] == [
        ((1, 3, 8, 8), (1, 3, 8, 8), (1, 3, 8, 8)),
        ((2, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8)),
    ]


def test_fixed_batch_onnx_uses_its_batch(tmp_path):
    sig = onnx_signature(conv_model(tmp_path / "fixed.onnx", dims=(4, 3, 8, 8)))
    assert sig.inputs[0].fixed_batch == 4
    (shapes,) = resolve_profiles(sig, None)
    assert shapes.batch == BatchProfile(4, 4, 4)
    assert resolve_profiles(sig, [BatchProfile(4, 4, 4)])[0].shapes["input"][2] == (4, 3, 8, 8)


def test_fixed_batch_onnx_with_another_batch_is_a_clear_error(tmp_path):
    sig = onnx_signature(conv_model(tmp_path / "fixed.onnx", dims=(4, 3, 8, 8)))
    with pytest.raises(InputError) as info:
        resolve_profiles(sig, [BatchProfile(1, 4, 8)])
    text = str(info.value)
    assert "fixed batch of 4" in text and "1..8" in text
    assert "dynamic batch" in text and "--profile 4" in text


def test_symbolic_spatial_axes_need_input_shape(tmp_path):
    sig = onnx_signature(conv_model(tmp_path / "hw.onnx", dims=("batch", 3, "height", "width")))
    with pytest.raises(InputError, match="--input-shape"):
        resolve_profiles(sig, None)
    (shapes,) = resolve_profiles(sig, [BatchProfile(1, 2, 4)], input_shape=(3, 16, 24))
    assert shapes.shapes["input"] == ((1, 3, 16, 24), (2, 3, 16, 24), (4, 3, 16, 24))


def test_input_shape_must_agree_with_fixed_axes(tmp_path):
    sig = onnx_signature(conv_model(tmp_path / "m.onnx"))
    assert resolve_profiles(sig, None, input_shape=(3, 8, 8))[0].shapes["input"][0] == (1, 3, 8, 8)
    with pytest.raises(InputError, match="disagrees"):
        resolve_profiles(sig, None, input_shape=(3, 16, 16))
    with pytest.raises(InputError, match="axes"):
        resolve_profiles(sig, None, input_shape=(3, 8))


def test_several_inputs_share_the_batch(tmp_path):
    sig = onnx_signature(two_input_model(tmp_path / "two.onnx"))
    (shapes,) = resolve_profiles(sig, [BatchProfile(1, 2, 3)])
    assert shapes.shapes == {"a": ((1, 4), (2, 4), (3, 4)), "b": ((1, 4), (2, 4), (3, 4))}
    with pytest.raises(InputError, match="single-input"):
        resolve_profiles(sig, None, input_shape=(4,))


def test_missing_or_broken_onnx(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        onnx_signature(tmp_path / "absent.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 this is not a protobuf \xff" * 10)
    with pytest.raises(InputError, match="not a readable ONNX"):
        onnx_signature(junk)


def test_select_profile_prefers_the_nearest_opt():
    profiles = [BatchProfile(1, 1, 4), BatchProfile(1, 16, 32)]
    assert select_profile(1, profiles) == 0
    assert select_profile(4, profiles) == 0
    assert select_profile(12, profiles) == 1
    assert select_profile(32, profiles) == 1
    with pytest.raises(InputError, match="batch 64 is outside") as info:
        select_profile(64, profiles)
    assert "1..4, 1..32" in str(info.value) and "--profile 1:64:64" in str(info.value)


def test_a_batch_below_every_profile_names_a_profile_from_1_and_max_batch_0_is_refused():
    with pytest.raises(InputError) as info:
        select_profile(4, [BatchProfile(8, 16, 32)])
    assert str(info.value).endswith("e.g. --profile 1:4:32")  # from 1, optimised for the batch, up to the largest
    with pytest.raises(InputError) as refused:
        batch_profiles_from_options(max_batch=0)
    assert (refused.value.message, refused.value.hint) == ("--max-batch must be >= 1, got 0", "batch sizes start at 1")
