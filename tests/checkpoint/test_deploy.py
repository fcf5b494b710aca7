"""Deploy checkpoints written by ``odexport reparam`` load through the same entry point."""

from __future__ import annotations

import pytest
import torch

from odexport.checkpoint import load_checkpoint
from odexport.errors import InputError
from odexport.models import create_model


def test_deploy_checkpoint_round_trip(tmp_path):
    from odexport.reparam import reparameterise
    from odexport.reparam.deploy import save_deploy

    source = tmp_path / "dy.pt"
    torch.save(create_model("dy_resnet_tiny").state_dict(), source)
    loaded = load_checkpoint(source, temperature=2.0)
    report = reparameterise(loaded.model)
    deploy_path = save_deploy(report.model, report, tmp_path / "dy_deploy.pt", loaded.info)

    deployed = load_checkpoint(deploy_path)
    info = deployed.info
    assert info.source == "deploy" and info.arch == "dy_resnet_tiny" and info.layout == "kaijieshi7"
    assert info.input_shape == (3, 32, 32)
    assert info.temperature == 2.0 and info.extras["temperature_folded"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(deployed.model(x), loaded.model(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(InputError, match="folded"):
        load_checkpoint(deploy_path, temperature=1.0)
