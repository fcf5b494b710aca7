"""Model zoo: a name-addressed registry of dynamic-convolution architectures.

``create_model(name, **kwargs)`` builds one, ``list_models(pattern)`` lists the names,
``model_info(name)`` describes one without building it.  One file per architecture family:

==========================  ===========  ==============================================
file                        layout       architectures
==========================  ===========  ==============================================
``od_resnet.py``            odconv       ``od_resnet18/34/50/101/152`` (OSVAI/ODConv)
``od_mobilenetv2.py``       odconv       ``od_mobilenetv2_050/075/100``
``dy_resnet.py``            kaijieshi7   ``dy_resnet18/34/50/101/152``, ``dy_resnext50_32x4d``,
                                         ``dy_resnext101_32x8d``, ``dy_wide_resnet50_2/101_2``
                                         (Dynamic-convolution-Pytorch)
``dy_vgg.py``               kaijieshi7   ``dy_vgg11/13/16/19`` and ``..._bn``
``ta_resnet.py``            tardelean    ``ta_resnet10/18`` (TArdelean/DynamicConvolution)
``ta_mobilenetv2.py``       tardelean    ``ta_mobilenetv2``
``ta_mobilenetv3.py``       tardelean    ``ta_mobilenetv3_small/large``
``dy_mobilenet.py``         odexport     ``dy_mobilenetv2_100/075/050/035``, ``dy_mobilenetv3_small``
``dy_resnet_paper.py``      odexport     ``dy_resnet10/18`` (the DY-Conv paper's ResNets)
==========================  ===========  ==============================================

Each family but ``ta_mobilenetv3`` (small enough at width 0.25) also registers a ``*_tiny`` variant (``tiny=True``) used by the tests.
:func:`static_twin` turns any of them into the plain-convolution baseline of the benchmarks.
"""

from odexport.models._registry import ModelInfo, close_matches, create_model, list_models, model_info, register_model
from odexport.models.twin import static_twin

# Importing the family modules registers their builders.
from odexport.models import od_resnet, od_mobilenetv2, dy_resnet, ta_resnet, ta_mobilenetv2, ta_mobilenetv3  # noqa: E402,F401
from odexport.models import dy_mobilenet, dy_resnet_paper, dy_vgg  # noqa: E402,F401

__all__ = ["ModelInfo", "close_matches", "create_model", "list_models", "model_info", "register_model", "static_twin"]
