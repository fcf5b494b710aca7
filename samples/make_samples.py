"""Train the two sample checkpoints shipped in ``samples/`` (deterministic, CPU, a few minutes).

Data: scikit-learn's bundled handwritten digits (``sklearn.datasets.load_digits``: 1797 8x8
grayscale images, 10 classes, installed with the package, no download).  Each image is scaled to
[0, 1] (pixel / 16), enlarged by pixel repetition and repeated over 3 channels: 4x to ``(3, 32,
32)`` for the OD-ResNet, 8x to ``(3, 64, 64)`` for the DY-MobileNetV2 (the input size each
architecture is registered with).  A fixed stratified split keeps the same 360 images (20 %) for
validation at both sizes; they are saved with their labels as ``digits_val.npz`` (32x32) and
``digits_val_64.npz`` (64x64), keys ``x`` (float32, NCHW) and ``y`` (int64).  Training images are
shifted by up to 3 pixels (zero fill) as augmentation.

Models (both from the odexport zoo, saved in the layouts of the public training scripts):

* ``od_resnet_digits.pth.tar``: ``od_resnet_tiny`` (ODConv, K=4, all four attentions) saved as
  OSVAI/ODConv's ``main.py`` writes a checkpoint: ``{'epoch', 'state_dict' (every key prefixed
  ``module.``), 'acc', 'best_acc', 'optimizer'}``.  Trained with ODConv's temperature annealing,
  ``T = 1 + max(0, 29 * (1 - (epoch * iters + iteration) / (temp_epochs * iters)))`` set on every
  layer every iteration, so T falls from 30 to 1 over the first ``--temp-epochs`` epochs and stays 1.
  One deviation from ODConv's recipe: the BatchNorm inside each attention is kept in eval mode
  during training (its running statistics stay at their initial 0 and 1; its scale and shift
  train).  With batch statistics, the first attention normalises pooled features that hardly
  differ between digits (std ~0.025 across a batch), amplifying their noise ~40x, and training at
  T = 1 diverged.  The file's layout and the inference math are those of the official code.
* ``dy_mobilenetv2_digits.pth``: ``ta_mobilenetv2`` (DY-Conv, K=4, reduce 4, width multiplier
  0.1, 10 classes, 64x64 input) saved as TArdelean/DynamicConvolution's ``utils.save_checkpoint``
  writes one: ``{'model', 'optimizer', 'scheduler', 'epoch'}`` (no ``module.`` prefix).  Trained
  with that code's ``TemperatureScheduler(30, 1, temp_epochs)``: linear from 30 at epoch 1 to 1 at
  epoch ``--dy-temp-epochs``, one value per epoch.

Both: SGD (momentum 0.9, Nesterov, weight decay 1e-4, learning rate 0.05 with a per-step cosine
decay), batch 64, cross-entropy.  Both are evaluated in eval mode at T = 1 (the only correct
temperature for a trained network); the script prints the validation accuracy and records it, with
sizes and settings, in ``samples/accuracy.json``.

Determinism: fixed seeds, ``torch.use_deterministic_algorithms(True)``, a fixed thread count
(``--threads``, default 1: float sums reorder with the thread count, so another count gives
slightly different weights), data order and augmentation from a seeded generator.  Re-running with
the same torch version and thread count on the same kind of CPU reproduces the weights bit for bit;
another CPU makes MKL and oneDNN pick kernels that round differently, and training takes another path.

Usage::

    pip install -e '.[samples]'          # scikit-learn
    python samples/make_samples.py       # writes samples/*.pth*, digits_val*.npz, accuracy.json
    python samples/make_samples.py --only od   # one of the two
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from odexport.layers import dynamic_convs, set_temperature
from odexport.models import create_model

HERE = Path(__file__).resolve().parent
SEED = 0
NUM_VAL = 360
UPSCALE = 4  # 8x8 -> 32x32: od_resnet_tiny's input
DY_UPSCALE = 8  # 8x8 -> 64x64: ta_mobilenetv2's input (Tiny-ImageNet size; at 32x32 its stride-32 trunk ends at 1x1)

OD_ARCH, OD_KWARGS = "od_resnet_tiny", dict(num_classes=10, kernel_num=4)
DY_ARCH, DY_KWARGS = "ta_mobilenetv2", dict(num_classes=10, width_multiplier=0.1, kernel_num=4, reduce=4)


# ----------------------------------------------------------------------------------------- data
def digits_dataset(upscale: int = UPSCALE) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_val, y_val)``; x float32 (N, 3, 8*upscale, 8*upscale) in [0, 1], y int64.

    The split does not depend on ``upscale``: the same 360 digits are held out at every size.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0  # pixel values are 0..16
    images = images.repeat(upscale, axis=1).repeat(upscale, axis=2)  # nearest-neighbour enlargement
    x = np.ascontiguousarray(np.repeat(images[:, None], 3, axis=1))  # grey -> 3 channels
    y = digits.target.astype(np.int64)
    x_tr, x_val, y_tr, y_val = train_test_split(x, y, test_size=NUM_VAL, stratify=y, random_state=SEED)
    return x_tr, y_tr, x_val, y_val


def random_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 3) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels in x and y (zero fill): cheap augmentation."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets.tolist())])


# ------------------------------------------------------------------------------------- training
def odconv_temperature(iteration: int, epoch: int, iters_per_epoch: int, temp_epochs: int, temp_init: float = 30.0) -> float:
    """OSVAI/ODConv ``utils.get_temperature`` (iteration counts from 1)."""
    total = temp_epochs * iters_per_epoch
    return 1.0 + max(0.0, (temp_init - 1.0) * (1.0 - (epoch * iters_per_epoch + iteration) / total))


def tardelean_temperature(epoch: int, temp_epochs: int, start: float = 30.0, end: float = 1.0) -> float:
    """TArdelean ``TemperatureScheduler(start, end, temp_epochs).get(epoch)``, epochs from 1."""
    if epoch >= temp_epochs:
        return end
    return start + (end - start) * (epoch - 1) / (temp_epochs - 1)


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 120) -> float:
    model.eval()
    set_temperature(model, 1.0)
    correct = 0
    for i in range(0, len(x), batch):
        logits = model(torch.from_numpy(x[i:i + batch]))
        correct += int((logits.argmax(1).numpy() == y[i:i + batch]).sum())
    return correct / len(x)


def train(model: nn.Module, data, *, epochs: int, lr: float, batch: int, temperature_at, log_name: str,
          frozen_batchnorms: list[nn.Module] = ()):
    """SGD (momentum 0.9, weight decay 1e-4, cosine learning rate) with a temperature schedule.

    ``temperature_at(epoch, iteration, iters_per_epoch)`` (epoch from 0, iteration from 1) gives
    the temperature set on every dynamic layer before each step.  Returns the optimizer, the
    scheduler and the per-epoch validation accuracies.
    """
    x_tr, y_tr, x_val, y_val = data
    generator = torch.Generator().manual_seed(SEED)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4, nesterov=True)
    iters = math.ceil(len(x_tr) / batch)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * iters)
    x_tr_t, y_tr_t = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    history = []
    for epoch in range(epochs):
        model.train()
        for bn in frozen_batchnorms:  # running statistics stay as they are; scale and shift still train
            bn.eval()
        order = torch.randperm(len(x_tr), generator=generator)
        start, loss_sum = time.perf_counter(), 0.0
        for it in range(iters):
            idx = order[it * batch:(it + 1) * batch]
            if len(idx) < 2:  # ODConv's attention BatchNorm cannot train on one sample
                continue
            temperature = temperature_at(epoch, it + 1, iters)
            set_temperature(model, temperature)
            xb = random_shift(x_tr_t[idx], generator)
            loss = F.cross_entropy(model(xb), y_tr_t[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += float(loss.detach())
        acc = accuracy(model, x_val, y_val)
        history.append(acc)
        print(f"[{log_name}] epoch {epoch + 1:2d}/{epochs}  T_end={temperature:5.2f}  loss={loss_sum / iters:.4f}  "
              f"val_acc={acc:.4f}  ({time.perf_counter() - start:.1f}s)", flush=True)
    return optimizer, scheduler, history


def save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def make_od_resnet(data, args, out: Path) -> dict:
    torch.manual_seed(SEED)
    model = create_model(OD_ARCH, **OD_KWARGS)
    attention_bns = [layer.attention.bn for _, layer in dynamic_convs(model)]
    optimizer, _, history = train(
        model, data, epochs=args.od_epochs, lr=0.05, batch=64, log_name="od_resnet",
        temperature_at=lambda epoch, it, iters: odconv_temperature(it, epoch, iters, args.temp_epochs),
        frozen_batchnorms=attention_bns,
    )
    acc = accuracy(model, data[2], data[3])
    # OSVAI/ODConv main.py: the model is wrapped in DataParallel/DDP, so every key has "module.".
    state_dict = {f"module.{k}": v for k, v in model.state_dict().items()}
    checkpoint = {
        "epoch": args.od_epochs,
        "state_dict": state_dict,
        "acc": torch.tensor(100.0 * acc),  # main.py stores top-1 in percent as a 0-dim tensor
        "best_acc": torch.tensor(100.0 * max(history)),
        "optimizer": optimizer.state_dict(),
    }
    path = out / "od_resnet_digits.pth.tar"
    save_atomic(checkpoint, path)
    return {"file": path.name, "arch": OD_ARCH, "kwargs": OD_KWARGS, "layout": "odconv", "epochs": args.od_epochs,
            "temp_epochs": args.temp_epochs, "input_shape": [3, 8 * UPSCALE, 8 * UPSCALE], "val_accuracy": acc, "params": sum(p.numel() for p in model.parameters()),
            "bytes": path.stat().st_size}


def make_dy_mobilenetv2(data, args, out: Path) -> dict:
    torch.manual_seed(SEED)
    model = create_model(DY_ARCH, **DY_KWARGS)
    optimizer, scheduler, _ = train(
        model, data, epochs=args.dy_epochs, lr=0.05, batch=64, log_name="dy_mobilenetv2",
        temperature_at=lambda epoch, it, iters: tardelean_temperature(epoch + 1, args.dy_temp_epochs),
    )
    acc = accuracy(model, data[2], data[3])
    # TArdelean utils.save_checkpoint: single device, no "module." prefix.
    checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                  "scheduler": scheduler.state_dict(), "epoch": args.dy_epochs}
    path = out / "dy_mobilenetv2_digits.pth"
    save_atomic(checkpoint, path)
    return {"file": path.name, "arch": DY_ARCH, "kwargs": DY_KWARGS, "layout": "tardelean", "epochs": args.dy_epochs,
            "temp_epochs": args.dy_temp_epochs, "input_shape": [3, 8 * DY_UPSCALE, 8 * DY_UPSCALE], "val_accuracy": acc, "params": sum(p.numel() for p in model.parameters()),
            "bytes": path.stat().st_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the files depend on it; default 1)")
    parser.add_argument("--od-epochs", type=int, default=35)
    parser.add_argument("--dy-epochs", type=int, default=25)
    parser.add_argument("--temp-epochs", type=int, default=2, help="OD-ResNet: epochs over which T anneals from 30 to 1")
    parser.add_argument("--dy-temp-epochs", type=int, default=3, help="DY-MobileNetV2: epoch at which T reaches 1")
    parser.add_argument("--only", choices=("od", "dy"), help="train only one of the two models")
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: samples/)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(SEED)
    np.random.seed(SEED)

    data = digits_dataset(UPSCALE)
    x_val, y_val = data[2], data[3]
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "digits_val.npz", x=x_val, y=y_val)
    data_64 = digits_dataset(DY_UPSCALE)
    np.savez_compressed(out / "digits_val_64.npz", x=data_64[2], y=data_64[3])

    results = {}
    summary_path = out / "accuracy.json"
    if summary_path.exists():
        results = json.loads(summary_path.read_text()).get("models", {})
    if args.only in (None, "od"):
        results["od_resnet"] = make_od_resnet(data, args, out)
    if args.only in (None, "dy"):
        results["dy_mobilenetv2"] = make_dy_mobilenetv2(data_64, args, out)
    summary = {
        "dataset": "sklearn.datasets.load_digits, pixel/16, pixel repetition to 32x32 (OD-ResNet) or 64x64 "
                   "(DY-MobileNetV2), 3 channels",
        "train_samples": int(len(data[0])),
        "val_samples": int(len(x_val)),
        "torch": torch.__version__,
        "threads": args.threads,
        "models": results,
    }
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    for name, res in results.items():
        print(f"{name}: {res['file']} val_accuracy={res['val_accuracy']:.4f} params={res['params']} bytes={res['bytes']}")


if __name__ == "__main__":
    main()
