"""``plan_forms`` / ``--form auto``: every layer gets an exact variant, and the cost model's choice
follows the layer's shape, the batch and the target."""

from __future__ import annotations

import dataclasses

import pytest
from torch import nn

from odexport.errors import ExportError
from odexport.export.forms import applicable_variants, describe_layers
from odexport.export.plan import LayerPlan, estimate_cost, plan_forms, plan_layers
from odexport.layers import DyConv2d, ODConv2d
from odexport.models import create_model


def test_plan_covers_every_layer_with_an_exact_variant():
    model = create_model("od_resnet_tiny").eval()
    plans = plan_forms(model, target="cpu", batch=None, input_shape=(3, 32, 32))
    specs = describe_layers(model, (3, 32, 32))
    assert [p.name for p in plans] == [s.name for s in specs]
    gpu = plan_forms(model, target="gpu", batch=None, input_shape=(3, 32, 32))
    assert {p.form for p in gpu} == {"decomposed"}  # standard ops for TensorRT
    for plan, spec in zip(plans, specs):
        assert isinstance(plan, LayerPlan) and plan.form == "custom"  # on CPU, what `odexport ort` specialises
        assert plan.variant in applicable_variants(spec) and plan.est_cost > 0 and plan.reason


def test_static_layers_export_as_static_convs():
    model = nn.Sequential(ODConv2d(16, 32, 1, kernel_num=1), DyConv2d(32, 8, 3, padding=1, num_kernels=1)).eval()
    plans = plan_forms(model, input_shape=(16, 8, 8))
    assert [p.variant for p in plans] == ["static", "static"]


def test_grouped_competes_only_with_a_fixed_batch():
    model = nn.Sequential(ODConv2d(16, 16, 3, padding=1, kernel_num=4)).eval()
    dynamic = plan_forms(model, batch=None, input_shape=(16, 14, 14))
    assert all(p.variant != "grouped" and "grouped" not in p.reason for p in dynamic)  # not even ranked
    fixed = plan_forms(model, batch=8, input_shape=(16, 14, 14))
    assert " grouped " in fixed[0].reason  # ranked with the dynamic-batch variants, by estimated cost
    single = plan_forms(model, batch=1, input_shape=(16, 14, 14))  # batch 1: the one sample's kernel, as grouped's conv
    assert single[0].variant == "sample" and "grouped's conv" in single[0].reason
    with pytest.raises(ExportError):
        plan_forms(model, form="grouped", batch=None, input_shape=(16, 14, 14))


def test_kbranch_wins_at_large_batch_for_a_small_late_dy_layer_on_gpu():
    """DY-Conv 512->512 3x3 at 7x7: K x FLOPs of static GEMMs beat B per-sample kernels at batch 64
    (the H100 measurements in the design notes: 0.197 ms vs 3.25 ms)."""
    spec = describe_layers(nn.Sequential(DyConv2d(512, 512, 3, padding=1)).eval(), (512, 7, 7))[0]
    assert estimate_cost(spec, "kbranch", 64, "gpu") < estimate_cost(spec, "bmm", 64, "gpu")
    assert estimate_cost(spec, "kbranch", 64, "gpu") < estimate_cost(spec, "grouped", 64, "gpu")
    assert plan_layers([spec], "auto", target="gpu", batch=64)[0].variant == "kbranch"


def test_forms_force_the_form_but_keep_an_exact_variant():
    model = nn.Sequential(ODConv2d(8, 8, 3, padding=1), DyConv2d(8, 8, 1)).eval()
    for form in ("custom", "decomposed"):
        plans = plan_forms(model, form=form, input_shape=(8, 6, 6))
        assert {p.form for p in plans} == {form}
    grouped = plan_forms(model, form="grouped", batch=2, input_shape=(8, 6, 6))
    assert [p.variant for p in grouped] == ["grouped", "grouped"]


def test_plan_to_dict_is_json_ready():
    import json

    plan = plan_forms(nn.Sequential(ODConv2d(8, 8, 3, padding=1)).eval(), input_shape=(8, 6, 6))[0]
    data = plan.to_dict()
    assert set(data) == {f.name for f in dataclasses.fields(LayerPlan)} - {"spec"}
    json.dumps(data)


def test_unknown_target_and_form():
    model = nn.Sequential(ODConv2d(8, 8, 3, padding=1)).eval()
    with pytest.raises(ExportError):
        plan_forms(model, target="tpu", input_shape=(8, 6, 6))
    with pytest.raises(ExportError):
        plan_forms(model, form="fastest", input_shape=(8, 6, 6))
