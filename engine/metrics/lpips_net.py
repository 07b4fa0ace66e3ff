"""LPIPS v0.1 with the AlexNet backbone (Zhang et al. 2018), from ``params/lpips_alex.safetensors``.

No torchvision (it does not import beside the local torch build): the five AlexNet feature layers are
plain convolutions here, named as in the weight file. Reproduces the LPIPS authors' check values
d(ex_ref, ex_p0) = 0.7219 and d(ex_ref, ex_p1) = 0.1376 (tests/test_metrics.py).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from frdm.engine.errors import InputError
from frdm.engine.metrics.params_files import param_path

# The scaling layer of LPIPS: inputs in [-1, 1] are standardised with these (ImageNet statistics mapped to
# [-1, 1]).
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


class AlexNetFeatures(nn.Module):
    """AlexNet's convolutional trunk; returns the activations after each of its five ReLUs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 11, stride=4, padding=2)
        self.conv2 = nn.Conv2d(64, 192, 5, padding=2)
        self.conv3 = nn.Conv2d(192, 384, 3, padding=1)
        self.conv4 = nn.Conv2d(384, 256, 3, padding=1)
        self.conv5 = nn.Conv2d(256, 256, 3, padding=1)
        self.pool = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f1 = torch.relu(self.conv1(x))
        f2 = torch.relu(self.conv2(self.pool(f1)))
        f3 = torch.relu(self.conv3(self.pool(f2)))
        f4 = torch.relu(self.conv4(f3))
        f5 = torch.relu(self.conv5(f4))
        return [f1, f2, f3, f4, f5]


class LPIPS(nn.Module):
    """d(x0, x1) = sum_l mean_hw( w_l . (n(f_l(x0)) - n(f_l(x1)))^2 ), n = unit norm over channels."""

    def __init__(self) -> None:
        super().__init__()
        self.alexnet = AlexNetFeatures()
        channels = (64, 192, 384, 256, 256)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in channels)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))

    @classmethod
    def from_safetensors(cls, path: str | None = None) -> LPIPS:
        from safetensors.torch import load_file

        path = path or param_path("lpips_alex.safetensors")
        state = load_file(path)
        model = cls()
        mapped = {}
        for key, value in state.items():
            if key.startswith("lin"):
                mapped[f"lins.{key[3]}.weight"] = value
            else:
                mapped[key] = value
        missing, unexpected = model.load_state_dict(mapped, strict=False)
        missing = [k for k in missing if k not in ("shift", "scale")]
        if missing or unexpected:
            raise InputError(f"{path}: not an LPIPS-AlexNet weight file (missing {missing}, unexpected {unexpected})")
        return model.eval()

    @staticmethod
    def _unit(f: torch.Tensor) -> torch.Tensor:
        return f / (torch.sqrt(torch.sum(f * f, dim=1, keepdim=True)) + 1e-10)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """x0, x1: (N, 3, H, W) in [-1, 1]. Returns (N,) distances."""
        f0 = self.alexnet((x0 - self.shift) / self.scale)
        f1 = self.alexnet((x1 - self.shift) / self.scale)
        total = 0
        for lin, a, b in zip(self.lins, f0, f1):
            total = total + lin((self._unit(a) - self._unit(b)) ** 2).mean(dim=(2, 3))
        return total[:, 0]


@functools.lru_cache(maxsize=4)
def _model(device: str) -> LPIPS:
    return LPIPS.from_safetensors().to(device)


def _to_tensor(img: np.ndarray, device: str) -> torch.Tensor:
    arr = np.asarray(img, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise InputError(f"LPIPS needs (H, W, 3) RGB images, got {arr.shape}")
    return torch.from_numpy(arr * 2.0 - 1.0).permute(2, 0, 1)[None].to(device)


@torch.no_grad()
def lpips_distance(pred: np.ndarray, gt: np.ndarray, *, device: str = "cpu") -> float:
    """LPIPS between two (H, W, 3) images in [0, 1] (lower is closer)."""
    if np.shape(pred) != np.shape(gt):
        raise InputError(f"LPIPS: the prediction is {np.shape(pred)} but the ground truth is {np.shape(gt)}")
    model = _model(device)
    return float(model(_to_tensor(pred, device), _to_tensor(gt, device))[0])
