"""The keys of the ``metadata_props`` odexport writes into an exported ONNX file.

The exporter writes them; ``check`` (provenance note, per-layer passes), ``bench`` (the static
twin), the onnxruntime runner (sample shape) and the precision pass read them back.  One home for
the names, so a writer and its readers cannot drift apart.  Every value is a string; JSON where
noted.  docs/forms.md ("What an export writes") describes the values.
"""

PREFIX = "odexport."

VERSION = PREFIX + "version"
SOURCE_SHA256 = PREFIX + "source_sha256"  # the checkpoint's sha256, or a checksum of the state dict
SOURCE_KIND = PREFIX + "source_kind"  # "checkpoint" or "state_dict": what SOURCE_SHA256 is of
DEPLOY_SOURCE_SHA256 = PREFIX + "deploy_source_sha256"  # a deploy checkpoint's own source
REPARAM = PREFIX + "reparam"  # what `odexport onnx` did to the model before export, in words
REPARAM_PASSES = PREFIX + "reparam_passes"  # the passes that changed it, comma-separated
FREEZE = PREFIX + "freeze"  # a frozen deploy file's freeze in words (layers, measured output deviation)
ARCH = PREFIX + "arch"  # zoo name, "" when unknown
WEIGHTS_ENTRY = PREFIX + "weights_entry"  # the checkpoint entry the weights came from, when it was its EMA ("model_ema")
TEMPERATURE = PREFIX + "temperature"  # the attention temperature the export computes (absent when the layers' differ)
MODEL_CLASS = PREFIX + "model_class"
MODEL_KWARGS = PREFIX + "model_kwargs"  # JSON object
FORM = PREFIX + "form"  # the --form asked for
FORMS = PREFIX + "forms"  # JSON list of {name, form, variant}, one per dynamic conv
OPSET = PREFIX + "opset"
BATCH = PREFIX + "batch"  # "dynamic" or the fixed batch size
INPUT_SHAPE = PREFIX + "input_shape"  # one sample, "CxHxW"
PRECISION = PREFIX + "precision"  # "fp32" or "fp16"
TARGET = PREFIX + "target"  # "cpu" or "gpu": what --form auto planned for
# written after export: by `odexport ort` (JSON: the machine and onnxruntime it was made for) and
# by check --per-layer on its in-memory copy with extra outputs (JSON: which value is which layer's)
ORT_CPU = PREFIX + "ort_cpu"
LAYER_VALUES = PREFIX + "layer_values"


def prefixed(name: str) -> str:
    """``name`` as a metadata key: ``"reparam"`` -> ``"odexport.reparam"``; a full key is kept."""
    return name if name.startswith(PREFIX) else PREFIX + name
