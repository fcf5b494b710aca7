"""Checkpoints written by the public reference training scripts reproduce the reference outputs.

Both files in ``../shared/refdata`` were made with the unmodified public code (see its README):
the OSVAI/ODConv ``main.py`` container (``module.`` keys, optimizer, 0-dim ``acc``) and the
TArdelean ``{'model', 'epoch'}`` container.  Detection must find the architecture and options on
its own, and the outputs must match at batch 1 and 2 within 1e-5, at the stored temperatures.
"""

from __future__ import annotations

import torch

from odexport.checkpoint import load_checkpoint
from odexport.layers import set_temperature
from tests.conftest import load_refdata, refdata_path

TOL = dict(atol=1e-5, rtol=1e-5)


def test_odconv_training_checkpoint():
    path = refdata_path("odconv", "od_mobilenetv2_050_k4.pth.tar")
    io = load_refdata("odconv", "od_mobilenetv2_050_k4.io.pt")
    loaded = load_checkpoint(path)
    info = loaded.info
    assert (info.arch, info.layout) == ("od_mobilenetv2_050", "odconv") == (io["meta"]["arch"], "odconv")
    assert info.model_kwargs["kernel_num"] == io["meta"]["kwargs"]["kernel_num"] == 4
    assert info.num_classes == 1000 and info.temperature == 1.0
    assert info.extras["stripped_prefixes"] == ["module."] and "optimizer" in info.extras["ignored_entries"]
    assert info.extras["conformed_layers"] == []
    x = io["input"]
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), io["logits"], **TOL)  # batch 2
        torch.testing.assert_close(loaded.model(x[:1]), io["logits_bs1_sample0"], **TOL)  # batch 1
    set_temperature(loaded.model, 4.0)  # what load_checkpoint(temperature=4.0) does (tests/checkpoint/test_detect.py)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), io["logits_temperature4"], **TOL)


def test_tardelean_training_checkpoint():
    path = refdata_path("dyconv", "tardelean_Resnet_DY_05_1.pth")
    io = load_refdata("dyconv", "tardelean_Resnet_DY_05.io.pt")
    loaded = load_checkpoint(path)
    info = loaded.info
    assert (info.arch, info.layout) == ("ta_resnet10", "tardelean")
    assert info.model_kwargs == {"kernel_num": 4, "num_classes": 200, "width_multiplier": 0.5}
    assert info.extras["output"] == "log_softmax" and info.extras["weights_entry"] == "model"
    x = io["input"]
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), io["output_T1"], **TOL)
        torch.testing.assert_close(loaded.model(x[:1]), io["output_bs1_sample0_T1"], **TOL)
    hot = load_checkpoint(path, temperature=30)
    assert hot.info.temperature == 30.0
    with torch.no_grad():
        torch.testing.assert_close(hot.model(x), io["output_T30"], **TOL)
        torch.testing.assert_close(hot.model(x[1:]), io["output_T30"][1:], **TOL)
