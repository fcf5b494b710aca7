"""Whole-model checkpoints written by the public reference code load strictly and reproduce it.

Reference data: ``../shared/refdata`` (see its README); skipped with a reason when absent.
Tolerance atol = rtol = 1e-5 (the reference itself moves ~2e-7 between batch sizes and threads).
"""

from __future__ import annotations

import pytest
import torch

from odexport.layers import set_temperature
from odexport.models import create_model
from tests.conftest import load_refdata

TOL = dict(atol=1e-5, rtol=1e-5)


def strip_module_prefix(state_dict: dict) -> dict:
    # The official ODConv training script wraps the model in (D)DP: every key starts with "module.".
    return {k.removeprefix("module."): v for k, v in state_dict.items()}


@pytest.fixture(scope="module")
def od_mobilenetv2_050_k4():
    """Load the checkpoint strictly, then run it once per case (each forward is costly on CPU)."""
    checkpoint = load_refdata("odconv", "od_mobilenetv2_050_k4.pth.tar")
    io = load_refdata("odconv", "od_mobilenetv2_050_k4.io.pt")
    model = create_model("od_mobilenetv2_050", kernel_num=4).eval()
    model.load_state_dict(strip_module_prefix(checkpoint["state_dict"]), strict=True)
    captured = {}
    hooks = [
        model.get_submodule(name).register_forward_hook(lambda m, i, out, name=name: captured.__setitem__(name, out))
        for name in io["intermediates"]
    ]
    with torch.no_grad():
        try:
            logits = model(io["input"])
        finally:
            for hook in hooks:
                hook.remove()
        logits_bs1 = model(io["input"][:1])
        set_temperature(model, 4.0)
        logits_t4 = model(io["input"])
        set_temperature(model, 1.0)
    ours = {"logits": logits, "logits_bs1_sample0": logits_bs1, "logits_temperature4": logits_t4, "intermediates": captured}
    return ours, io


def test_od_mobilenetv2_050_k4_logits(od_mobilenetv2_050_k4):
    ours, io = od_mobilenetv2_050_k4
    assert io["meta"]["arch"] == "od_mobilenetv2_050" and io["meta"]["kwargs"] == {"kernel_num": 4}
    torch.testing.assert_close(ours["logits"], io["logits"], **TOL)
    torch.testing.assert_close(ours["logits_bs1_sample0"], io["logits_bs1_sample0"], **TOL)


def test_od_mobilenetv2_050_k4_temperature4(od_mobilenetv2_050_k4):
    ours, io = od_mobilenetv2_050_k4
    torch.testing.assert_close(ours["logits_temperature4"], io["logits_temperature4"], **TOL)
    assert not torch.allclose(ours["logits_temperature4"], ours["logits"], **TOL)  # T really changed


def test_od_mobilenetv2_050_k4_intermediates(od_mobilenetv2_050_k4):
    ours, io = od_mobilenetv2_050_k4
    batch = io["input"].shape[0]
    assert set(ours["intermediates"]) == set(io["intermediates"])
    for name, expected in io["intermediates"].items():
        got_value = ours["intermediates"][name]
        if name.endswith("attention"):
            # reference: 4-tuple (channel, filter, spatial, kernel) shaped for broadcasting, None
            # where a head is skipped; ours: the same values flat (B, N), None in the same places.
            assert len(expected) == len(got_value) == 4, name
            for head, ref, got in zip(("channel", "filter", "spatial", "kernel"), expected, got_value):
                assert (ref is None) == (got is None), f"{name}.{head}"
                if ref is not None:
                    torch.testing.assert_close(got, ref.reshape(batch, -1), **TOL, msg=f"{name}.{head}")
        else:
            torch.testing.assert_close(got_value, expected, **TOL, msg=name)


@pytest.fixture(scope="module")
def tardelean_resnet10_w05():
    checkpoint = load_refdata("dyconv", "tardelean_Resnet_DY_05_1.pth")
    io = load_refdata("dyconv", "tardelean_Resnet_DY_05.io.pt")
    model = create_model("ta_resnet10", width_multiplier=0.5).eval()
    model.load_state_dict(checkpoint["model"], strict=True)
    return model, io


def test_tardelean_resnet10_outputs(tardelean_resnet10_w05):
    model, io = tardelean_resnet10_w05
    with torch.no_grad():
        torch.testing.assert_close(model(io["input"]), io["output_T1"], **TOL)
        torch.testing.assert_close(model(io["input"][:1]), io["output_bs1_sample0_T1"], **TOL)


def test_tardelean_resnet10_temperature30(tardelean_resnet10_w05):
    model, io = tardelean_resnet10_w05
    try:
        assert set_temperature(model, 30.0) == 2 * 4 + 3  # every dynamic layer: 8 block convs, 3 shortcuts
        with torch.no_grad():
            torch.testing.assert_close(model(io["input"]), io["output_T30"], **TOL)
    finally:
        set_temperature(model, 1.0)


def test_tardelean_resnet10_round_trips_its_keys(tardelean_resnet10_w05):
    model, _ = tardelean_resnet10_w05
    reference = load_refdata("dyconv", "tardelean_Resnet_DY_05_1.pth")["model"]
    saved = model.state_dict()
    assert list(saved) == list(reference)  # same names, same order: a file we save loads in their code
    for key, value in reference.items():
        assert saved[key].shape == value.shape, key
        assert torch.equal(saved[key], value), key
