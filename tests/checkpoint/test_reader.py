"""Reading checkpoint files safely: containers, prefixes, formats, CUDA-saved tensors and bad files."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from odexport.checkpoint import extract_state_dict, read_checkpoint_file
from odexport.errors import CheckpointError


def _weights():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).state_dict()


def _same(loaded, saved):
    """The loaded weights are the saved ones, on the CPU whatever device they were saved from."""
    assert sorted(loaded) == sorted(saved)
    for key in loaded:
        assert loaded[key].device.type == "cpu", key
        torch.testing.assert_close(loaded[key], saved[key].cpu(), rtol=0, atol=0)


def _extract(path, **kw):
    return extract_state_dict(read_checkpoint_file(path, **kw).obj)


# -- containers and prefixes -------------------------------------------------------------------
def test_bare_state_dict_and_sha256(tmp_path):
    path = tmp_path / "bare.pt"
    torch.save(_weights(), path)
    raw = read_checkpoint_file(path)
    assert raw.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert raw.file_format == "torch-zip"
    weights = extract_state_dict(raw.obj)
    assert weights.entry == "<root>" and not weights.stripped_prefixes
    _same(weights.state_dict, _weights())


def test_odconv_training_script_container_with_module_prefix_and_optimizer(tmp_path):
    """OSVAI/ODConv main.py: {'epoch','state_dict' (module.-prefixed),'acc','best_acc','optimizer'}.

    On a machine with a GPU, DataParallel moves the model there, so the file holds CUDA tensors.
    """
    model = nn.DataParallel(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 5, 5)).sum().backward()
    optimizer.step()
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 3, "state_dict": model.state_dict(), "acc": torch.tensor(71.2), "best_acc": torch.tensor(71.5),
                "optimizer": optimizer.state_dict()}, path)
    weights = _extract(path)
    assert all(k.startswith("module.") for k in model.state_dict())
    assert weights.entry == "state_dict" and weights.stripped_prefixes == ["module."]
    assert sorted(weights.ignored_entries) == ["acc", "best_acc", "epoch", "optimizer"]
    _same(weights.state_dict, model.module.state_dict())


def test_tardelean_container_model_optimizer_scheduler(tmp_path):
    path = tmp_path / "Resnet_DY_05_1.pth"
    net = nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 10)
    torch.save({"model": _weights(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": 1}, path)
    weights = _extract(path)
    assert weights.entry == "model"
    _same(weights.state_dict, _weights())


def test_compiled_and_wrapped_prefixes_are_stripped(tmp_path):
    compiled = {f"module._orig_mod.{k}": v for k, v in _weights().items()}
    path = tmp_path / "compiled.pt"
    torch.save({"state_dict": compiled}, path)
    weights = _extract(path)
    assert weights.stripped_prefixes == ["module.", "_orig_mod."]
    _same(weights.state_dict, _weights())


def test_prefixes_in_either_order_and_nested_entries(tmp_path):
    """torch.compile of a DDP-wrapped model saves `_orig_mod.module.`: both go, whatever the order;
    weights one entry further down (`state_dict.model`, as some trainers nest them) are found."""
    compiled_ddp = {f"_orig_mod.module.{k}": v for k, v in _weights().items()}
    weights = extract_state_dict({"state_dict": compiled_ddp})
    assert weights.stripped_prefixes == ["_orig_mod.", "module."]
    _same(weights.state_dict, _weights())
    nested = extract_state_dict({"state_dict": {"model": _weights(), "step": 3}, "epoch": 2})
    assert nested.entry == "state_dict.model"
    _same(nested.state_dict, _weights())
    deeper = extract_state_dict({"state_dict": {"model": {"net": _weights()}}})
    assert deeper.entry == "state_dict.model.net"
    _same(deeper.state_dict, _weights())
    beside = extract_state_dict({**_weights(), "arch_name": "dy_resnet"})  # a string saved among the tensors
    assert beside.dropped_non_tensors == ["arch_name"]
    _same(beside.state_dict, _weights())


def test_prefix_kept_when_not_on_every_key():
    state = {"module.weight": torch.ones(2), "head.weight": torch.ones(2)}
    assert list(extract_state_dict(state).state_dict) == ["module.weight", "head.weight"]


def test_ema_weights_are_loaded_only_when_asked_or_alone(tmp_path):
    plain = _weights()
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in plain.items()}
    both = {"model": plain, "model_ema": {f"module.{k}": v for k, v in ema.items()}, "epoch": 5}
    chosen = extract_state_dict(both)
    assert chosen.entry == "model" and not chosen.used_ema and chosen.ema_entry == "model_ema"
    _same(chosen.state_dict, plain)
    preferred = extract_state_dict(both, prefer_ema=True)
    assert preferred.used_ema and preferred.stripped_prefixes == ["module."]
    _same(preferred.state_dict, ema)
    alone = extract_state_dict({"ema": ema, "epoch": 5})
    assert alone.used_ema
    _same(alone.state_dict, ema)


def test_bookkeeping_tensors_saved_with_the_weights_are_dropped_and_named(tmp_path):
    """torch's AveragedModel (torchvision's reference EMA: every key under 'module.' plus an
    'n_averaged' counter) and the thop profiler's per-module total_ops/total_params buffers made
    every architecture misfit; the zoo model loads and computes what the original does."""
    from torch.optim.swa_utils import AveragedModel

    from odexport.models import create_model
    from odexport.pipeline import model_from_checkpoint

    torch.manual_seed(3)
    original = create_model("dy_resnet_tiny").eval()
    profiled = dict(original.state_dict())
    for name, _ in original.named_modules():
        profiled[f"{name}.total_ops" if name else "total_ops"] = torch.zeros(1, dtype=torch.float64)
        profiled[f"{name}.total_params" if name else "total_params"] = torch.zeros(1, dtype=torch.float64)
    files = {"ema.pth": ({"model_ema": AveragedModel(original).state_dict(), "epoch": 3}, {"n_averaged (torch.optim.swa_utils.AveragedModel's counter)": 1}),
             "thop.pth": (profiled, {"total_ops/total_params (thop profiler counters)": len(profiled) - len(original.state_dict())})}
    x = torch.randn(2, 3, 32, 32)
    for name, (saved, dropped) in files.items():
        torch.save(saved, tmp_path / name)
        loaded = model_from_checkpoint(tmp_path / name)
        assert loaded.info.arch == "dy_resnet_tiny" and loaded.info.extras["dropped_counters"] == dropped, name
        assert any("dropped bookkeeping tensors" in w for w in loaded.info.warnings)
        with torch.no_grad():
            torch.testing.assert_close(loaded.model(x), original(x), rtol=0, atol=0)
    # a key named like a counter inside a plain state dict without 'module.' keys stays
    assert extract_state_dict({"n_averaged": torch.ones(1), "w": torch.ones(3)}).state_dict.keys() == {"n_averaged", "w"}
    # a profiler counter is one number: a 'total_ops' of several is a weight of that name
    from odexport.checkpoint.state_dict import drop_counters

    kept, dropped = drop_counters({"a.weight": torch.zeros(3), "a.total_ops": torch.zeros(4), "b.total_ops": torch.zeros(1)})
    assert list(kept) == ["a.weight", "a.total_ops"] and dropped == {"total_ops/total_params (thop profiler counters)": 1}
    # half of the entries tensors: still the weights themselves (a step counter saved beside them)
    half = extract_state_dict({"conv.weight": torch.zeros(2, 3, 3, 3), "step": 3})
    assert (half.entry, list(half.state_dict), half.dropped_non_tensors) == ("<root>", ["conv.weight"], ["step"])


def test_training_metadata_types_need_no_full_unpickling(tmp_path):
    """argparse.Namespace and numpy scalars/arrays next to the weights are allowed types."""
    path = tmp_path / "with_args.pth"
    torch.save({"state_dict": _weights(), "args": argparse.Namespace(lr=0.1, arch="od_resnet18"),
                "acc": np.float64(71.3), "history": np.arange(4.0)}, path)
    weights = _extract(path)
    _same(weights.state_dict, _weights())
    # numpy's RNG state (a uint32 array), saved for reproducible resumes, was called "damaged"
    torch.save({"state_dict": _weights(), "np_rng": np.random.default_rng(0).bit_generator.state,
                "legacy_rng": np.random.RandomState(0).get_state()}, path)
    _same(_extract(path).state_dict, _weights())
    # a numpy type outside the allowed ones: refused as an object, with --trust-pickle, not as damage
    torch.save({"state_dict": _weights(), "when": np.array(["2020-01-01"], dtype="datetime64[D]")}, path)
    message = _one_line_error(path, "stores objects PyTorch's weights-only reader refuses")
    # numpy >= 1.25 pickles the dtype as numpy.dtypes.DateTime64DType, older numpy as numpy.dtype[datetime64]
    assert ("DateTime64DType" in message or "dtype[datetime64]" in message) and "--trust-pickle" in message


@pytest.mark.parametrize("protocol", [4, 5])
def test_a_newer_pickle_protocol_is_named_not_called_damaged(tmp_path, protocol):
    """torch.save(..., pickle_protocol=4/5) uses opcodes PyTorch's weights-only reader lacks; the
    file is intact, so the error names the protocol and both ways out, and --trust-pickle reads it."""
    path = tmp_path / "p.pth"
    torch.save({"state_dict": _weights()}, path, pickle_protocol=protocol)
    message = _one_line_error(path, f"was saved with pickle protocol {protocol}, which PyTorch's weights-only reader cannot parse")
    assert "--trust-pickle" in message and "damaged" not in message
    _same(extract_state_dict(read_checkpoint_file(path, trust_pickle=True).obj).state_dict, _weights())


def test_safetensors(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in _weights().items()}, str(path), metadata={"arch": "od_resnet_tiny"})
    raw = read_checkpoint_file(path)
    assert raw.file_format == "safetensors" and raw.metadata == {"arch": "od_resnet_tiny"}
    _same(extract_state_dict(raw.obj).state_dict, _weights())


def test_legacy_torch_format(tmp_path):
    path = tmp_path / "legacy.pth.tar"
    torch.save({"state_dict": _weights()}, path, _use_new_zipfile_serialization=False)
    raw = read_checkpoint_file(path)
    assert raw.file_format == "torch-legacy"
    _same(extract_state_dict(raw.obj).state_dict, _weights())


# -- tensors saved from CUDA -------------------------------------------------------------------
_TAG_AS_CUDA = {"on": False}


def _cuda_tagger(storage):
    """While on, tag CPU storages with location 'cuda:0', as torch.save does for CUDA tensors."""
    return "cuda:0" if _TAG_AS_CUDA["on"] and storage.device.type == "cpu" else None


def _pass_deserializer(storage, location):
    return None  # never handles a location itself: the default loaders do


torch.serialization.register_package(0, _cuda_tagger, _pass_deserializer)


@contextlib.contextmanager
def _saved_as_on_cuda():
    _TAG_AS_CUDA["on"] = True
    try:
        yield
    finally:
        _TAG_AS_CUDA["on"] = False


def test_cuda_saved_checkpoint_loads_on_cpu(tmp_path):
    """No CUDA here, so the tensors cannot be on a GPU: instead every storage in the file carries the
    location tag 'cuda:0', byte for byte what torch.save writes for CUDA tensors (the OSVAI/ODConv
    script's 'acc' is a 0-dim CUDA tensor).  Loading such a file without map_location fails on a
    CPU-only machine; the reader maps it to the CPU."""
    path = tmp_path / "gpu_trained.pth.tar"
    with _saved_as_on_cuda():
        torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in _weights().items()},
                    "acc": torch.tensor(12.5), "best_acc": torch.tensor(12.5)}, path)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)  # proves the file really is tagged for CUDA
    raw = read_checkpoint_file(path)
    assert raw.obj["acc"].device.type == "cpu" and float(raw.obj["acc"]) == 12.5
    weights = extract_state_dict(raw.obj)
    assert all(v.device.type == "cpu" for v in weights.state_dict.values())
    _same(weights.state_dict, _weights())


# -- pickled modules ---------------------------------------------------------------------------
class PickledNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)


def test_pickled_module_is_refused_without_trust_pickle(tmp_path):
    path = tmp_path / "whole_model.pt"
    torch.save(PickledNet(), path)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint_file(path)
    message = str(info.value)
    assert "\n" not in message
    assert "arbitrary code" in message and "--trust-pickle" in message and "PickledNet" in message


def test_pickled_module_loads_with_trust_pickle(tmp_path):
    net = PickledNet()
    path = tmp_path / "whole_model.pt"
    torch.save(net, path)
    raw = read_checkpoint_file(path, trust_pickle=True)
    assert raw.unpickled_module.endswith("PickledNet")
    _same(extract_state_dict(raw.obj).state_dict, net.state_dict())


def test_a_pickled_module_inside_the_checkpoint_dict_loads_with_trust_pickle(tmp_path):
    """``torch.save({'model': model, 'epoch': 3})``: the module under 'model' gives its weights, as
    a top-level pickled module does (it had been reported as "no weights found")."""
    net = PickledNet()
    path = tmp_path / "ckpt.pth"
    torch.save({"model": net, "epoch": 3, "optimizer": {"state": {}}}, path)
    raw = read_checkpoint_file(path, trust_pickle=True)
    assert raw.unpickled_module.endswith("PickledNet") and raw.obj["epoch"] == 3
    _same(extract_state_dict(raw.obj).state_dict, net.state_dict())


def test_a_pickled_module_three_dicts_deep_loads_with_trust_pickle(tmp_path):
    """A module two dicts down (``{'ckpt': {'model': model}}``, as some trainers nest their state)
    still gives its weights; the plain state dict beside it keeps its type and ``_metadata``."""
    net = PickledNet()
    path = tmp_path / "nested.pth"
    torch.save({"ckpt": {"model": net, "epoch": 3}, "other": {"inner": {"deep": nn.Linear(2, 3)}}}, path)
    raw = read_checkpoint_file(path, trust_pickle=True)
    assert raw.unpickled_module.endswith("PickledNet")
    _same(raw.obj["ckpt"]["model"], net.state_dict())
    assert isinstance(raw.obj["other"]["inner"]["deep"], dict)  # three dicts deep: converted too


def test_a_state_dict_keeps_its_version_metadata(tmp_path):
    """load_state_dict reads a BatchNorm's version from ``_metadata`` (older versions lack
    num_batches_tracked): the reader hands the state dict on as saved, not as a rebuilt dict."""
    path = tmp_path / "bn.pt"
    torch.save(nn.BatchNorm2d(3).state_dict(), path)
    obj = read_checkpoint_file(path).obj
    assert getattr(obj, "_metadata", None) == {"": {"version": 2}}


def test_numpy_objects_that_need_full_unpickling_are_named(tmp_path):
    """A saved numpy Generator needs full unpickling: the error names its classes (numpy arrays and
    scalars beside it are safe and not named); a class of the file's own is named first."""
    path = tmp_path / "with_rng.pth"
    torch.save({"w": torch.ones(2), "acc": np.float64(0.5), "arr": np.ones(3), "rng": np.random.default_rng(0)}, path)
    message = _one_line_error(path, "--trust-pickle")
    assert "numpy.random" in message and "ndarray" not in message and "multiarray" not in message
    path = tmp_path / "with_class.pth"
    torch.save({"w": torch.ones(2), "arr": np.ones(3), "rng": np.random.default_rng(0), "cfg": PickledConfig()}, path)
    message = _one_line_error(path, "--trust-pickle")
    assert message.index("PickledConfig") < message.index("numpy.random")


class PickledConfig:
    pass


def test_plain_pickle_is_refused(tmp_path):
    path = tmp_path / "weights.pkl"
    with open(path, "wb") as handle:
        pickle.dump({"weight": np.ones(3)}, handle, protocol=4)
    with pytest.raises(CheckpointError, match="--trust-pickle"):
        read_checkpoint_file(path)


def test_legacy_files_of_the_text_pickle_protocols(tmp_path):
    """torch.save(..., pickle_protocol=0 or 1, legacy format) starts with text, not PROTO: both had
    been called "not a checkpoint". Protocol 1 loads with --trust-pickle; protocol 0 not even with
    torch.load itself, which the error says instead of blaming the file's kind."""
    paths = {}
    for protocol in (0, 1):
        paths[protocol] = tmp_path / f"p{protocol}.pth"
        torch.save(_weights(), paths[protocol], pickle_protocol=protocol, _use_new_zipfile_serialization=False)
    with pytest.raises(Exception):
        torch.load(paths[0], weights_only=False)  # torch's own reader fails on its protocol-0 files
    message = _one_line_error(paths[0], "was written by torch.save with pickle protocol 0 in the legacy format")
    assert "save the weights again" in message
    _one_line_error(paths[1], "--trust-pickle")
    _same(extract_state_dict(read_checkpoint_file(paths[1], trust_pickle=True).obj).state_dict, _weights())


def test_a_state_dict_saved_with_pickle_dump_loads_with_trust_pickle(tmp_path):
    """pickle.dump(state_dict, f) is not torch.save's format: refused without --trust-pickle, and
    with it read as the plain pickle it is (it had been called damaged)."""
    path = tmp_path / "weights.pkl"
    with open(path, "wb") as handle:
        pickle.dump(_weights(), handle)
    with pytest.raises(CheckpointError, match="--trust-pickle"):
        read_checkpoint_file(path)
    _same(extract_state_dict(read_checkpoint_file(path, trust_pickle=True).obj).state_dict, _weights())


# -- broken files ------------------------------------------------------------------------------
def _one_line_error(path, match):
    with pytest.raises(CheckpointError) as info:
        read_checkpoint_file(path)
    message = str(info.value)
    assert "\n" not in message and " -- " in message, message  # one line: problem -- fix
    assert match in message, message
    return message


def test_missing_file(tmp_path):
    (tmp_path / "model_best.pth.tar").write_bytes(b"x")
    message = _one_line_error(tmp_path / "model_bset.pth.tar", "does not exist")
    assert "model_best.pth.tar" in message  # lists the files that are there
    (tmp_path / "EPOCH_90.PTH").write_bytes(b"x")  # suffixes in any case, as the loader reads them
    (tmp_path / "notes.txt").write_text("x")
    message = _one_line_error(tmp_path / "model_bset.pth.tar", "does not exist")
    assert "EPOCH_90.PTH" in message and "notes.txt" not in message


def test_truncated_zip(tmp_path):
    path = tmp_path / "cut.pth"
    torch.save({"state_dict": _weights()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _one_line_error(path, "truncated or corrupted")


def test_truncated_legacy_file(tmp_path):
    path = tmp_path / "cut_legacy.pth"
    torch.save({"state_dict": _weights()}, path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:300])
    _one_line_error(path, "truncated or corrupted")


def test_legacy_file_cut_inside_its_tensor_data(tmp_path):
    """Cut after the pickle, inside the storages: torch says "unexpected EOF"; that is truncation."""
    path = tmp_path / "cut_data.pth"
    torch.save({"w": torch.ones(1000)}, path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:-100])
    _one_line_error(path, "truncated or corrupted")


def test_safetensors_cut_inside_its_header(tmp_path):
    """The header length promises more than the file holds: a truncated safetensors file, not
    "not a checkpoint"."""
    from safetensors.torch import save_file

    path = tmp_path / "cut.safetensors"
    save_file({"w": torch.ones(64)}, str(path))
    path.write_bytes(path.read_bytes()[:30])
    _one_line_error(path, "corrupted or truncated safetensors file")


def test_random_bytes_text_and_empty_file(tmp_path):
    noise = tmp_path / "noise.pt"
    noise.write_bytes(os.urandom(2048).replace(b"\x80", b"\x00").replace(b"PK", b"pk"))
    _one_line_error(noise, "not a checkpoint")
    text = tmp_path / "notes.pth"
    text.write_text("epoch 1: acc 71\n")
    _one_line_error(text, "not a checkpoint")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    _one_line_error(empty, "empty")


def test_onnx_file_is_named_as_such(tmp_path):
    """An export passed where a checkpoint belongs: say what it is, whatever its name."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, producer_name="test")
    onnx.save(model, str(tmp_path / "model.onnx"))
    _one_line_error(tmp_path / "model.onnx", "is an ONNX model, not a checkpoint")
    # under a checkpoint's name: the commands that run an export know it by its suffix (the sidecar
    # the message named is the export's own name plus .json, which such a file lacks)
    onnx.save(model, str(tmp_path / "weights.pt"))
    message = _one_line_error(tmp_path / "weights.pt", "is an ONNX model named like a checkpoint (.pt)")
    assert "rename it to weights.onnx" in message and "sidecar" not in message
    # random bytes under an export's name are neither: not called an ONNX model with a sidecar it lacks
    (tmp_path / "noise.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    message = _one_line_error(tmp_path / "noise.onnx", "is neither a checkpoint nor a readable ONNX model")
    assert "sidecar" not in message


def test_ort_format_model_is_named_as_such(tmp_path):
    """onnxruntime's .ort format (minimal and mobile builds), made by onnxruntime's own converter:
    named, with the .onnx to gate instead; not "not a checkpoint" with its first bytes."""
    import subprocess
    import sys

    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "model.onnx"))
    subprocess.run([sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(tmp_path / "model.onnx"),
                    "--output_dir", str(tmp_path / "ort")], check=True, capture_output=True, timeout=300)
    message = _one_line_error(tmp_path / "ort" / "model.ort", "is an ONNX Runtime format model (.ort")
    assert "gate the .onnx it was converted from" in message

    from odexport.runtime.ort_specialise import specialise_onnx  # `odexport ort` reads ONNX files itself

    with pytest.raises(CheckpointError, match=r"is an ONNX Runtime format model \(\.ort.*odexport ort model\.onnx"):
        specialise_onnx(tmp_path / "ort" / "model.ort", tmp_path / "out.onnx", measure=False)
    assert not (tmp_path / "out.onnx").exists()


def test_zip_that_is_not_a_checkpoint(tmp_path):
    import zipfile

    path = tmp_path / "archive.tar"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    _one_line_error(path, "not a torch checkpoint")


def test_flipped_bytes_inside_a_tensor_are_refused(tmp_path):
    """torch.load does not check the zip's CRCs: bytes flipped in a tensor's data loaded as wrong
    weights with no error.  The reader checks them and names the damaged member."""
    import zipfile

    path = tmp_path / "weights.pth"
    torch.save({"weight": torch.arange(4096, dtype=torch.float32)}, path)
    with zipfile.ZipFile(path) as archive:
        member = next(info for info in archive.infolist() if info.filename.endswith("/data/0"))
    data = bytearray(path.read_bytes())
    start = member.header_offset + 30 + len(member.filename) + len(member.extra) + 100  # inside the tensor's bytes
    data[start:start + 16] = bytes(b ^ 0xFF for b in data[start:start + 16])
    path.write_bytes(bytes(data))
    assert not torch.equal(torch.load(path, weights_only=True)["weight"], torch.arange(4096, dtype=torch.float32))  # torch loads it
    _one_line_error(path, f"is corrupted: its member {member.filename} fails the zip archive's CRC check")


def test_corrupted_safetensors(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "broken.safetensors"
    save_file({"w": torch.ones(64)}, str(path))
    path.write_bytes(path.read_bytes()[:-40])
    _one_line_error(path, "safetensors")


def test_no_weights_inside(tmp_path):
    path = tmp_path / "meta_only.pt"
    torch.save({"epoch": 3, "acc": 0.5}, path)
    with pytest.raises(CheckpointError, match="no weights found"):
        _extract(path)


def test_tar_archive_holding_a_checkpoint_is_explained(tmp_path):
    import tarfile

    inner = tmp_path / "model_best.pth"
    torch.save(_weights(), inner)
    path = tmp_path / "release.tar"
    with tarfile.open(path, "w") as archive:
        archive.add(inner, arcname="model_best.pth")
    message = _one_line_error(path, "tar archive")
    assert "model_best.pth" in message and "extract" in message


def test_a_torchscript_archive_is_named_and_read_only_when_trusted(tmp_path):
    """`torch.jit.save` writes a zip that `torch.load(weights_only=True)` refuses; it used to be
    reported as a damaged file. Its weights are read with --trust-pickle (loading its TorchScript
    program), and a model built from them computes what the traced one does."""
    from odexport.checkpoint import load_checkpoint
    from odexport.models import create_model

    torch.manual_seed(0)
    model = create_model("od_resnet_tiny").eval()
    x = torch.randn(2, 3, 32, 32)
    path = tmp_path / "traced.pt"
    with torch.no_grad():
        torch.jit.trace(model, x[:1]).save(str(path))
    with pytest.raises(CheckpointError, match="is a TorchScript archive") as info:
        read_checkpoint_file(path)
    assert "--trust-pickle" in info.value.hint and "torch.jit.load('traced.pt').state_dict()" in info.value.hint
    raw = read_checkpoint_file(path, trust_pickle=True)
    assert raw.file_format == "torchscript" and set(raw.obj) == set(model.state_dict())
    loaded = load_checkpoint(path, trust_pickle=True)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x), atol=1e-6, rtol=1e-5)
