"""Build a TensorRT engine from an ONNX file (TensorRT 10.x and 11.x Python API).

The build, step by step (names are the TensorRT Python API):

1. check the inputs without TensorRT: ONNX signature, batch profiles (:mod:`.profiles`);
2. :func:`~odexport.engine.environment.require_tensorrt` (exit 3 when TensorRT or a GPU is missing);
3. decide typing and flags from the version (:func:`~odexport.engine.precision.plan_precision`);
4. load ``--plugin`` libraries/modules, then ``trt.init_libnvinfer_plugins``;
5. ``trt.Builder(logger).create_network(flags)`` with ``STRONGLY_TYPED`` where the plan says so;
6. ``trt.OnnxParser(network, logger)``: ``set_flag(OnnxParserFlag.ENABLE_PLUGIN_OVERRIDE)`` when
   plugins were given and this TensorRT has it (>= 10.15), then ``parse_from_file`` -- of a scratch
   copy with the model-local functions inlined where several share a name (:func:`onnx_for_parser`);
   every error is reported with its node's index, name and operator (:mod:`.parser_errors`);
7. ``builder.create_builder_config()``: ``set_memory_pool_limit(MemoryPoolType.WORKSPACE, bytes)``,
   ``builder_optimization_level``, ``BuilderFlag.FP16`` (weak typing only), ``clear_flag(TF32)``
   unless asked, one ``create_optimization_profile()`` per batch profile with ``set_shape(input,
   min, opt, max)``, and the timing cache (``create_timing_cache(bytes)`` -> ``set_timing_cache``);
8. ``builder.build_serialized_network(network, config)``; the timing cache is serialised back
   (``get_timing_cache().serialize()``) and the engine is written with its JSON sidecar atomically.

Steps 1 and 3 are pure and tested on CPU; the rest is written against the documented API and runs
in the ``tensorrt``-marked tests wherever TensorRT and a GPU exist.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from odexport._files import output_folder, refuse_overwriting_input
from odexport.engine.parser_errors import CUSTOM_OP_TYPES, complete_node_names, issues_from_parser, parser_error
from odexport.engine.precision import PrecisionPlan, onnx_precision, plan_precision
from odexport.engine.profiles import BatchProfile, OnnxSignature, ProfileShapes, onnx_signature, resolve_profiles
from odexport.engine.sidecar import EngineMetadata, rebuild_command, sha256_file, sidecar_path, write_engine
from odexport.engine.timing_cache import TimingCacheFile
from odexport.errors import ExportError, InputError

MAX_OPT_LEVEL = 5  # IBuilderConfig.builder_optimization_level: 0 (fastest build) .. 5 (most tactics); TensorRT default 3


@dataclass
class BuildOptions:
    """Options of one engine build; the CLI flags of ``odexport trt`` map one to one."""

    profiles: list[BatchProfile] | None = None  # None: the ONNX's fixed batch, or 1:8:32
    fp16: bool = False
    tf32: bool = False
    workspace_gib: float | None = None  # None: TensorRT's default (the device memory)
    opt_level: int | None = None  # None: TensorRT's default (3)
    timing_cache: str | Path | None = None
    plugins: tuple[str, ...] = ()
    input_shape: tuple[int, ...] | None = None  # one sample's shape where the ONNX leaves axes symbolic
    verbose: bool = False  # TensorRT's info/warning log on stderr
    source_checkpoint: str | Path | None = None  # recorded when the ONNX was exported from a checkpoint
    rebuild_source: str | Path | None = None  # what `rebuild` starts from (default: the ONNX)
    rebuild_extra_args: tuple[str, ...] = ()  # e.g. ("--arch", "od_resnet18") for a checkpoint source

    def validate(self) -> None:
        if self.workspace_gib is not None and not self.workspace_gib > 0:
            raise InputError(f"--workspace must be > 0 GiB, got {self.workspace_gib}", "e.g. --workspace 4")
        if self.opt_level is not None and not 0 <= self.opt_level <= MAX_OPT_LEVEL:
            raise InputError(f"--opt-level must be 0..{MAX_OPT_LEVEL}, got {self.opt_level}",
                             "0 builds fastest, 5 searches most kernels; TensorRT's default is 3")


@dataclass(frozen=True)
class BuildInputs:
    """The TensorRT-free part of a build: what the ONNX offers and the profiles that fit it."""

    onnx_path: Path
    signature: OnnxSignature
    profiles: list[ProfileShapes]
    onnx_precision: str  # "fp32" or "mixed"


def check_build_inputs(onnx_path: str | Path, options: BuildOptions) -> BuildInputs:
    """Validate options against the ONNX (exit 1 on a bad combination) before TensorRT is touched."""
    options.validate()
    onnx_path = Path(onnx_path)
    signature = onnx_signature(onnx_path)
    profiles = resolve_profiles(signature, options.profiles, options.input_shape)
    return BuildInputs(onnx_path, signature, profiles, onnx_precision(onnx_path))


@dataclass
class BuildResult:
    """What a build produced, for the CLI report and ``--json``."""

    engine_path: Path
    sidecar_path: Path
    metadata: EngineMetadata
    precision_plan: PrecisionPlan
    timing_cache_state: str | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "engine": str(self.engine_path),
            "sidecar": str(self.sidecar_path),
            "precision": self.precision_plan.to_dict(),
            "timing_cache": self.timing_cache_state,
            "warnings": list(self.warnings),
            "seconds": round(self.seconds, 3),
            "metadata": self.metadata.to_dict(),
        }


def default_engine_path(onnx_path: str | Path) -> Path:
    return Path(onnx_path).with_suffix(".engine")


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path | None = None,
    options: BuildOptions | None = None,
    *,
    stage: Callable[[str], None] | None = None,
) -> BuildResult:
    """Build ``onnx_path`` into ``engine_path`` (default: beside it, ``.engine``) and write the sidecar."""
    from odexport.engine import _trt
    from odexport.engine.environment import current_target, require_tensorrt
    from odexport.engine.plugins import load_plugins, registered_plugins

    options = options or BuildOptions()
    stage = stage or (lambda _name: None)
    inputs = check_build_inputs(onnx_path, options)
    onnx_path = inputs.onnx_path
    engine_path = Path(engine_path) if engine_path is not None else default_engine_path(onnx_path)
    _check_output_folder(engine_path)
    for written in (engine_path, sidecar_path(engine_path), options.timing_cache):
        if written is not None:
            refuse_overwriting_input(written, onnx_path)

    trt = require_tensorrt("building a TensorRT engine")
    target = current_target(trt)
    plan = plan_precision(
        target.tensorrt_version, options.fp16, inputs.onnx_precision, tf32=options.tf32,
        has_fp16_flag=_trt.optional_flag(trt.BuilderFlag, "FP16") is not None, onnx_name=onnx_path.name,
    )
    warnings: list[str] = []
    log = _trt.logger(trt)
    log.verbose = options.verbose
    log.clear()

    stage("load plugins")
    specs = load_plugins(options.plugins, trt, log)

    stage("parse ONNX")
    builder = trt.Builder(log)
    network_flags = 0
    if plan.strongly_typed:
        strongly = _trt.optional_flag(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
        if strongly is not None:  # absent only where strong typing is the sole mode
            network_flags |= 1 << int(strongly)
    network = builder.create_network(network_flags)
    if network is None:
        raise ExportError(f"TensorRT could not create a network ({_trt.last_errors(log) or 'no log'})", "rerun with --verbose")
    parser = trt.OnnxParser(network, log)
    plugin_override = False
    if specs:
        override = _trt.optional_flag(getattr(trt, "OnnxParserFlag", None), "ENABLE_PLUGIN_OVERRIDE")
        if override is not None:
            parser.set_flag(override)
            plugin_override = True
        else:
            warnings.append(
                f"TensorRT {target.tensorrt_version} has no ONNX-parser plugin override (TensorRT >= 10.15): odexport's "
                "custom-op nodes keep their inlined function body; a plugin serves only nodes with a plugin_namespace attribute "
                "or without a body"
            )
    # the parser reads the weights into its own memory while it parses: the scratch copy can go after it
    with tempfile.TemporaryDirectory(prefix=".odexport-trt-", dir=engine_path.parent) as scratch:
        parsed_path, shared = (onnx_path, _shared_functions(onnx_path)) if plugin_override else onnx_for_parser(onnx_path, Path(scratch))
        if parsed_path != onnx_path:
            warnings.append(f"the function bodies of {', '.join(shared)} were inlined before parsing: TensorRT's ONNX parser "
                            "ignores function overloads and would run the first body for every layer")
        parsed = parser.parse_from_file(str(parsed_path))
        if not parsed or int(parser.num_errors) > 0:
            raise parser_error(complete_node_names(issues_from_parser(parser), parsed_path), onnx_path)
    plugin_layers = _count_plugin_layers(trt, network)
    custom_nodes = _custom_node_count(onnx_path) if plugin_override and shared else 0
    if plugin_layers < custom_nodes:  # the rest would run the first-defined body, whatever their configuration
        raise ExportError(
            f"{custom_nodes - plugin_layers} of {custom_nodes} custom-op nodes were not taken by a plugin, and TensorRT's ONNX "
            f"parser ignores function overloads: they would all run the first body of {', '.join(shared)}",
            "load a plugin that serves every ODConv2d/DyConv2d node, or build without --plugin (the bodies are then inlined first)",
        )
    if specs:
        found = registered_plugins(trt, CUSTOM_OP_TYPES)
        if plugin_override and plugin_layers == 0:
            warnings.append(
                "--plugin was given but no ONNX node became a plugin layer: the parser looks a plugin up by the node's op type "
                f"({', '.join(CUSTOM_OP_TYPES)}), version '1' and the empty namespace (unless the node has plugin_version/"
                f"plugin_namespace attributes); registered under those names: {', '.join(found) or 'none'}"
            )

    stage("configure builder")
    config = builder.create_builder_config()
    if options.workspace_gib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * (1 << 30)))
    if options.opt_level is not None:
        config.builder_optimization_level = int(options.opt_level)
    if plan.fp16_builder_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    tf32_flag = _trt.optional_flag(trt.BuilderFlag, "TF32")
    if tf32_flag is not None and not plan.tf32:
        config.clear_flag(tf32_flag)  # fp32 means fp32: TF32 convs/matmuls would break 1e-5 parity
    for shapes in inputs.profiles:
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in shapes.shapes.items():
            try:  # the binding raises RuntimeError for inconsistent shapes instead of returning a status
                profile.set_shape(name, low, opt, high)
            except RuntimeError as exc:
                raise InputError(f"TensorRT rejected profile {shapes.batch.text()} for input '{name}' "
                                 f"(min {tuple(low)}, opt {tuple(opt)}, max {tuple(high)}): {' '.join(str(exc).split())}",
                                 "check the profile against the model's input shape") from exc
        if config.add_optimization_profile(profile) < 0:
            raise InputError(f"TensorRT rejected profile {shapes.batch.text()} ({_trt.last_errors(log) or 'no log'})",
                             "check the profile against the model's input shape")
    cache_file = TimingCacheFile(options.timing_cache) if options.timing_cache is not None else None
    if cache_file is not None:
        _attach_timing_cache(config, cache_file, warnings)

    stage("build engine (TensorRT times kernels; this can take minutes)")
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if serialized is None:
        raise ExportError(
            f"TensorRT could not build an engine from {onnx_path.name}: {_trt.last_errors(log) or 'no error was logged'}",
            "raise --workspace, lower --max-batch, or rerun with --verbose for the builder's log",
        )
    engine_bytes = bytes(serialized)

    cache_state = None
    if cache_file is not None:
        cache_state = cache_file.write(bytes(config.get_timing_cache().serialize()))

    stage("write engine")
    batch_profiles = [p.batch for p in inputs.profiles]
    checkpoint = None
    if options.source_checkpoint is not None and Path(options.source_checkpoint).is_file():
        checkpoint = {"path": str(options.source_checkpoint), "sha256": sha256_file(options.source_checkpoint)}
    notes = list(plan.notes) + warnings
    metadata = EngineMetadata(
        target=target,
        precision=plan.precision,
        profiles=[p.to_dict() for p in inputs.profiles],
        inputs=[s.to_dict() for s in inputs.signature.inputs],
        outputs=[s.to_dict() for s in inputs.signature.outputs],
        source_onnx={"path": str(onnx_path), "sha256": sha256_file(onnx_path), "metadata": dict(inputs.signature.metadata)},
        source_checkpoint=checkpoint,
        strongly_typed=plan.strongly_typed,
        fp16_builder_flag=plan.fp16_builder_flag,
        tf32=plan.tf32,
        plugins=[s.target for s in specs],
        plugin_override=plugin_override,
        build={
            "workspace_gib": options.workspace_gib,
            "opt_level": options.opt_level,
            "timing_cache": str(options.timing_cache) if options.timing_cache is not None else None,
            "timing_cache_state": cache_state,
            "plugin_layers": plugin_layers,
            "seconds": round(seconds, 3),
        },
        rebuild_command=rebuild_command(
            options.rebuild_source or onnx_path, engine_path, profiles=batch_profiles, fp16=plan.precision == "fp16",
            workspace_gib=options.workspace_gib, opt_level=options.opt_level, timing_cache=options.timing_cache,
            plugins=options.plugins, input_shape=options.input_shape, tf32=options.tf32,
            extra_args=options.rebuild_extra_args,
        ),
        notes=notes,
    )
    engine_path, side = write_engine(engine_path, engine_bytes, metadata)
    from odexport.engine.sidecar import read_sidecar

    return BuildResult(engine_path, side, read_sidecar(engine_path), plan, cache_state, warnings, seconds)


def _check_output_folder(engine_path: Path) -> None:
    output_folder(engine_path, example="model.engine")  # a missing folder, or a file where the folder should be
    if engine_path.is_dir() or sidecar_path(engine_path).is_dir():
        raise InputError(f"{engine_path} is a folder", "give a file name for the engine, e.g. -o model.engine")


def _attach_timing_cache(config, cache_file: TimingCacheFile, warnings: list[str]) -> None:
    """``create_timing_cache`` from the file's bytes and ``set_timing_cache``; start anew when TensorRT refuses them."""
    data = cache_file.read()
    try:
        cache = config.create_timing_cache(data)
    except Exception:  # a corrupt or foreign blob raises on some versions and returns None on others
        cache = None
    accepted = cache is not None and bool(config.set_timing_cache(cache, ignore_mismatch=False))
    if not accepted:
        if data:
            cache_file.reject()
            warnings.append(f"timing cache {cache_file.path} was made by another TensorRT version or GPU; a new one replaces it")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)


def _count_plugin_layers(trt, network) -> int:
    plugin_types = {t for t in (getattr(trt.LayerType, n, None) for n in ("PLUGIN", "PLUGIN_V2", "PLUGIN_V3")) if t is not None}
    return sum(1 for i in range(network.num_layers) if network.get_layer(i).type in plugin_types)


def onnx_for_parser(onnx_path: Path, folder: Path) -> tuple[Path, list[str]]:
    """The file to hand TensorRT's ONNX parser, and the functions that made a copy necessary.

    The parser keys model-local functions by name alone (onnx-tensorrt's ``localFunctions`` map):
    every node of one op type runs the first body defined under that name, whatever the node's
    ``overload``.  odexport's custom form defines one ``com.odexport::ODConv2d`` body per layer
    configuration, told apart by overload, so such a model is written to ``folder`` with every
    local function inlined (``onnx.inliner.inline_local_functions``: each node replaced by its own
    body, the computation of ``--form decomposed``; weights as external data, any size) and that
    copy is parsed.  A model whose functions all have distinct names is parsed as it is.
    """
    import onnx
    from onnx import inliner

    from odexport.export.verify import functions_sharing_a_name, refuse_rewritten_custom_form

    structure = onnx.load(str(onnx_path), load_external_data=False)
    refuse_rewritten_custom_form(structure, onnx_path)  # without its bodies the parser has nothing to build a layer from
    shared = functions_sharing_a_name(structure)
    del structure
    if not shared:
        return onnx_path, []
    inlined = inliner.inline_local_functions(onnx.load(str(onnx_path)))
    copy = folder / onnx_path.name
    onnx.save(inlined, str(copy), save_as_external_data=True, all_tensors_to_one_file=True, location=copy.name + ".data",
              size_threshold=1024)
    return copy, shared


def _shared_functions(onnx_path: Path) -> list[str]:
    import onnx

    from odexport.export.verify import functions_sharing_a_name

    return functions_sharing_a_name(onnx.load(str(onnx_path), load_external_data=False))


def _custom_node_count(onnx_path: Path) -> int:
    import onnx

    return sum(node.op_type in CUSTOM_OP_TYPES for node in onnx.load(str(onnx_path), load_external_data=False).graph.node)
