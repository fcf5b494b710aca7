"""Every layer of the three reference banks, wrapped in a model, exports in the custom and the
decomposed form with a dynamic batch and matches PyTorch and the reference implementation."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.inliner
import pytest

from odexport.export.custom import DOMAIN
from odexport.export.onnx_export import export_onnx
from odexport.export.verify import batch_constants
from tests.export._cases import TOL, assert_runs_at_batches, bank_params, refdata_layer_model, run_ort

EXAMPLE_BATCH = 13  # traced with an unusual batch, so a baked-in batch would show as 13


@pytest.mark.parametrize("bank,index", bank_params())
def test_layer_exports_in_custom_and_decomposed_form(tmp_path, bank, index):
    model, x_ref, y_ref, name = refdata_layer_model(bank, index)
    shape = tuple(x_ref.shape[1:])
    decomposed = export_onnx(model, tmp_path / "d.onnx", form="decomposed", input_shape=shape, check=False, example_batch=EXAMPLE_BATCH)
    custom = export_onnx(model, tmp_path / "c.onnx", form="custom", input_shape=shape, check=False, example_batch=EXAMPLE_BATCH)
    d_model, c_model = onnx.load(str(decomposed.path)), onnx.load(str(custom.path))

    # standard ops only vs one com.odexport node carrying its function
    assert all(n.domain in ("", "ai.onnx") for n in d_model.graph.node) and not d_model.functions
    custom_nodes = [n for n in c_model.graph.node if n.domain == DOMAIN]
    assert len(custom_nodes) == 1 and len(c_model.functions) == 1
    assert custom_nodes[0].op_type == custom.forms[0].spec.op

    # the batch stays symbolic: nothing equal to the traced batch in Reshape/Expand/Conv.group
    assert batch_constants(d_model, EXAMPLE_BATCH) == []
    assert batch_constants(c_model, EXAMPLE_BATCH) == []
    for m in (d_model, c_model):
        assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
        assert m.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"

    # onnxruntime == PyTorch at batch 1, 2 and 7, and == the reference implementation's output
    for path in (str(decomposed.path), str(custom.path)):
        assert_runs_at_batches(model, path, shape)
        np.testing.assert_allclose(run_ort(path, x_ref), y_ref.numpy(), **TOL, err_msg=f"{name} vs reference code")

    # the custom model inlined is the decomposed model, numerically
    inlined = onnx.inliner.inline_local_functions(c_model)
    assert not any(n.domain == DOMAIN for n in inlined.graph.node)
    x = np.random.default_rng(index).standard_normal((5, *shape)).astype(np.float32)
    np.testing.assert_allclose(run_ort(inlined, x), run_ort(d_model, x), atol=1e-6, rtol=1e-6)
