"""PyTorch eager reference for the CPU speed target: pre-act ResNet-164 (v2), one train step.

A faithful copy of `cifar_preact164` (docs/papers.md "v2 network details"): bare 3x3 stem,
three stages of 18 bottleneck units (64/128/256 channels, stride on the first 1x1), the
first unit of each stage pre-activating both paths into a bare 1x1 projection (option B),
a final BN-ReLU, global average pooling and FC. Its parameter count, 1,703,258, is checked
before timing. The step is what `train_state.train_step` does: forward in training mode,
softmax cross-entropy, backward, SGD with momentum 0.9 and weight decay 1e-4.

Run: `python -m benchmarks.torch_reference --batch=32 --threads=2 [--channels_last]`.
Prints one JSON line. torch is not a project dependency; install it only to compare.

`OMP_WAIT_POLICY=PASSIVE` is set (unless already set) before torch loads: torch's OpenMP
threads otherwise spin between operations, and on a shared 2-core machine a descheduled
spinner stalls every barrier; we measured 23 s per step spinning vs 1.6 s passive at a
load average of 3.6. Passive is torch's best case under load, and in `compare.py` it also
keeps torch's idle threads from taking cores from XLA's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402  (after the OpenMP setting)
from torch import nn  # noqa: E402

from benchmarks.step_time import cpu_seconds, load_average  # noqa: E402

PREACT164_PARAMETERS = 1_703_258


class PreActBottleneck(nn.Module):
    """BN-ReLU-1x1 -> BN-ReLU-3x3 -> BN-ReLU-1x1, add (v2 Fig. 4(e))."""

    def __init__(self, in_channels: int, channels: int, stride: int, first: bool):
        super().__init__()
        width = channels // 4
        self.first = first
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, width, 1, stride, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, channels, 1, bias=False)
        project = stride != 1 or in_channels != channels
        self.shortcut = nn.Conv2d(in_channels, channels, 1, stride, bias=False) if project else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu(self.bn1(x))
        # "both_preact": the first unit of a stage feeds the pre-activated tensor to both paths.
        shortcut_in = pre if self.first else x
        shortcut = self.shortcut(shortcut_in) if self.shortcut is not None else shortcut_in
        y = self.conv1(pre)
        y = self.conv2(torch.relu(self.bn2(y)))
        y = self.conv3(torch.relu(self.bn3(y)))
        return shortcut + y


class PreActResNet(nn.Module):
    def __init__(self, units_per_stage: int = 18, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        layers, in_channels = [], 16
        for i, channels in enumerate((64, 128, 256)):
            for j in range(units_per_stage):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(PreActBottleneck(in_channels, channels, stride, first=j == 0))
                in_channels = channels
        self.units = nn.Sequential(*layers)
        self.final_bn = nn.BatchNorm2d(in_channels)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.units(self.stem(x))
        x = torch.relu(self.final_bn(x)).mean((2, 3))
        return self.fc(x)


def build(batch: int = 32, threads: int = 2, channels_last: bool = False) -> Callable[[], float]:
    """The model, optimiser and a fixed batch; returns a function running one timed step."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = PreActResNet()
    parameters = sum(p.numel() for p in model.parameters())
    if parameters != PREACT164_PARAMETERS:
        raise AssertionError(f"torch pre-act ResNet-164 has {parameters:,} parameters, not {PREACT164_PARAMETERS:,}")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    images = torch.randn(batch, 3, 32, 32).to(memory_format=memory_format)
    labels = torch.randint(0, 10, (batch,))

    def step() -> float:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    return step


def label(batch: int, threads: int, channels_last: bool) -> dict:
    return {
        "framework": f"torch {torch.__version__}",
        "model": "preact164",
        "parameters": PREACT164_PARAMETERS,
        "batch": batch,
        "threads": threads,
        "memory_format": "channels_last" if channels_last else "contiguous",
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--channels_last", action="store_true")
    args = parser.parse_args(argv)
    step = build(args.batch, args.threads, args.channels_last)
    step()  # warm-up: allocator and oneDNN primitive caches
    times, cpu = [], []
    for _ in range(args.steps):
        start = cpu_seconds()
        times.append(step())
        cpu.append(cpu_seconds() - start)
    ms = 1000 * statistics.median(times)
    result = {
        **label(args.batch, args.threads, args.channels_last),
        "step_ms": round(ms, 1),
        "step_ms_min": round(1000 * min(times), 1),
        "cpu_s_per_step": round(statistics.median(cpu), 2),
        "images_per_s": round(args.batch / ms * 1000, 1),
        "loadavg_1m_5m": load_average(),
        "step_times_ms": [round(1000 * t, 1) for t in times],
        "cpu_s_per_step_all": [round(c, 3) for c in cpu],
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
