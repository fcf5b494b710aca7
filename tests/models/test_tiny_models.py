"""The tiny registered variants: small, fast, batch-consistent, and covering the layer variety."""

from __future__ import annotations

import pytest
import torch

from odexport.layers import DyConv2d, ODConv2d, dynamic_convs
from odexport.models import create_model, list_models, model_info
from tests.models._util import calibrate_batchnorm_

TINY = list_models(tiny=True)


@pytest.fixture(scope="module", params=TINY)
def tiny(request):
    model = calibrate_batchnorm_(create_model(request.param), model_info(request.param).input_shape)
    return request.param, model


def test_there_are_six_tiny_variants_one_per_family():
    assert len(TINY) == 6 and len({model_info(n).family for n in TINY}) == 6
    assert {model_info(n).layout for n in TINY} == {"odconv", "kaijieshi7", "tardelean", "odexport"}


def test_tiny_is_small(tiny):
    _, model = tiny
    assert sum(p.numel() for p in model.parameters()) < 500_000


def test_forward_batch_1_and_2(tiny):
    name, model = tiny
    x = torch.randn(2, *model_info(name).input_shape)
    with torch.no_grad():
        both = model(x)
        first = model(x[:1])
    assert both.shape == (2, 10) and first.shape == (1, 10)
    assert torch.isfinite(both).all() and both.abs().max() > 1e-2  # O(1) logits: the comparison means something
    # each sample gets its own kernels: running sample 0 alone gives the same output
    torch.testing.assert_close(first, both[:1], atol=1e-5, rtol=1e-5)
    # ... and the two samples really are processed differently
    assert not torch.allclose(both[0], both[1])


def test_output_kind(tiny):
    name, model = tiny
    with torch.no_grad():
        out = model(torch.randn(2, *model_info(name).input_shape))
    if model_info(name).output == "log_softmax":
        torch.testing.assert_close(out.exp().sum(1), torch.ones(2))
    else:
        assert not torch.allclose(out.exp().sum(1), torch.ones(2))


def test_every_tiny_model_has_k4_by_default_and_accepts_kernel_num(tiny):
    name, model = tiny
    ks = {getattr(m, "kernel_num", getattr(m, "num_kernels", None)) for _, m in dynamic_convs(model)}
    assert ks == {4}
    other = create_model(name, kernel_num=2)
    assert {m.weight.shape[0] for _, m in dynamic_convs(other)} == {2}


def test_tiny_variants_cover_the_layer_variety():
    seen = set()
    for name in TINY:
        for _, m in dynamic_convs(create_model(name)):
            k = m.weight.shape[-1]
            in_ch = m.weight.shape[2] * m.groups
            seen.add(f"k{k}")
            if m.stride != (1, 1):
                seen.add(f"stride_k{k}")
            if m.groups > 1 and m.groups == in_ch == m.weight.shape[1]:
                seen.add("depthwise")
            elif m.groups > 1:
                seen.add("grouped")
            if isinstance(m, DyConv2d) and m.bias is not None:
                seen.add("dynamic_bias")
            if isinstance(m, ODConv2d):
                seen.add("odconv")
    assert {"k1", "k3", "stride_k1", "stride_k3", "depthwise", "grouped", "dynamic_bias", "odconv"} <= seen


def test_tiny_models_train_one_step():
    # gradients reach every kernel bank and attention (nothing is accidentally frozen or detached)
    for name in TINY:
        model = create_model(name).train()
        out = model(torch.randn(2, *model_info(name).input_shape))
        out.sum().backward()
        for pname, p in model.named_parameters():
            assert p.grad is not None, f"{name}: {pname} got no gradient"
