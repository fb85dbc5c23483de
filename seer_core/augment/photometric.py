"""The photometric stage as batched tensor ops, for the trainer's device; and normalisation.

Same distortion as the CPU path (`colour.py`): per sample, with probability 0.8 a colour jitter
(brightness, contrast, saturation, hue) in a random order of its own, then grayscale with
probability 0.2, then (device path only, `augment.grain`) grey noise of a random level, then a
Gaussian blur with probability 0.5 and sigma ~ U(0.1, 2). The jitter and
grayscale compose per sample into one 3x3 matrix + offset (same documented approximations as
`colour.py`: one clamp at the end, hue as a rotation about the grey axis), so the whole colour
part is one batched matrix product whatever the order; the blur is one grouped separable
convolution with a kernel per sample (identity for samples that are not blurred). No host
synchronisation, no Python loop over samples.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .colour import LUMA, PhotometricParams

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def normalize(
    batch: torch.Tensor,
    mean: tuple[float, ...] | torch.Tensor = IMAGENET_MEAN,
    std: tuple[float, ...] | torch.Tensor = IMAGENET_STD,
) -> torch.Tensor:
    """uint8 [..., 3, h, w] (0-255) or float in [0, 1] -> float32 (x - mean) / std.

    One fused multiply-subtract on the batch's own device: the division by 255 and by std are
    folded into one scale.
    """
    if batch.dim() < 3 or batch.shape[-3] != 3:
        raise ValueError(f"expected [..., 3, h, w], got {list(batch.shape)}")
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=batch.device).view(3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=batch.device).view(3, 1, 1)
    unit = 255.0 if batch.dtype == torch.uint8 else 1.0
    scale = 1.0 / (std_t * unit)
    return batch.to(torch.float32).mul(scale).sub_(mean_t / std_t)


def hue_matrices(shift: torch.Tensor) -> torch.Tensor:
    """[N] hue shifts (turns) -> [N, 3, 3] rotations about the grey axis (`colour.py`)."""
    theta = 2.0 * math.pi * shift.float()
    c, s = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    eye = torch.eye(3, device=shift.device)
    axis = torch.full((3, 3), 1.0 / 3.0, device=shift.device)
    cross = torch.tensor(
        [[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]], device=shift.device
    ) / math.sqrt(3.0)
    return c * eye + (1.0 - c) * axis + s * cross


def _gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """[N] sigmas (0 = no blur) -> [N, 2*radius+1] normalised 1-D kernels."""
    x = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    safe = sigma.clamp_min(1e-6)[:, None]
    k = torch.exp(-0.5 * (x[None, :] / safe) ** 2)
    k = k / k.sum(dim=1, keepdim=True)
    delta = (x == 0).to(torch.float32).expand_as(k)
    return torch.where(sigma[:, None] > 0, k, delta)


class BatchPhotometric(nn.Module):
    """Colour jitter (random order per sample) -> grayscale -> grain -> blur, on [N, 3, h, w].

    Input and output in [0, 1], any device and float dtype. Randomness comes from the
    `generator` passed to `forward` (drawn on the generator's device, then moved), so a seeded
    generator gives the same result on any device. Has no parameters or buffers.
    """

    def __init__(self, params: PhotometricParams | None = None) -> None:
        super().__init__()
        self.params = params or PhotometricParams()
        # Kernel radius covers 3 sigma of the largest blur.
        self.radius = max(1, math.ceil(3.0 * self.params.sigma[1]))

    def sample(
        self,
        n: int,
        device: torch.device,
        generator: torch.Generator | None = None,
        params: PhotometricParams | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-sample random parameters (identity values where an op is not applied).

        `params` replaces `self.params` for this draw (a ramped strength); the same random
        numbers are drawn either way, so the stream does not depend on the strength.
        """
        p = params or self.params
        gdev = generator.device if generator is not None else device
        u = torch.rand(n, 10, generator=generator, device=gdev).to(device)
        order = torch.argsort(torch.rand(n, 4, generator=generator, device=gdev), dim=1)
        jitter = u[:, 0] < p.p_jitter
        one = torch.ones(n, device=device)

        def factor(strength: float, col: int) -> torch.Tensor:
            return torch.where(jitter, 1.0 + strength * (2.0 * u[:, col] - 1.0), one)

        sigma_u = p.sigma[0] + (p.sigma[1] - p.sigma[0]) * u[:, 7]
        return {
            "order": order.to(device),
            "brightness": factor(p.brightness, 1),
            "contrast": factor(p.contrast, 2),
            "saturation": factor(p.saturation, 3),
            "hue": torch.where(jitter, p.hue * (2.0 * u[:, 4] - 1.0), one * 0.0),
            "grayscale": u[:, 5] < p.p_grayscale,
            "sigma": torch.where(u[:, 6] < p.p_blur, sigma_u, one * 0.0),
            "grain": p.grain * u[:, 8],
        }

    @staticmethod
    def colour_affine(
        draws: dict[str, torch.Tensor], mean_rgb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, 3, 3] matrices and [N, 3] offsets of jitter-in-order then grayscale."""
        n, device = mean_rgb.shape[0], mean_rgb.device
        luma = torch.as_tensor(LUMA, dtype=torch.float32, device=device)
        eye = torch.eye(3, device=device).expand(n, 3, 3)
        grey_proj = torch.ones(3, 1, device=device) * luma[None, :]  # rows = luma
        b = draws["brightness"][:, None, None]
        c = draws["contrast"]
        s = draws["saturation"][:, None, None]
        fixed = [
            eye * b,  # brightness
            None,  # contrast: depends on the running mean
            s * eye + (1.0 - s) * grey_proj,  # saturation
            hue_matrices(draws["hue"]),  # hue
        ]
        m, t = eye.clone(), torch.zeros(n, 3, device=device)
        for slot in range(4):
            op = draws["order"][:, slot]
            grey = ((m @ mean_rgb[:, :, None]).squeeze(-1) + t) @ luma
            contrast_m = eye * c[:, None, None]
            contrast_t = ((1.0 - c) * grey)[:, None].expand(n, 3)
            cand_m = torch.stack([fixed[0], contrast_m, fixed[2], fixed[3]])  # [4, N, 3, 3]
            cand_t = torch.stack([torch.zeros_like(t), contrast_t, torch.zeros_like(t),
                                  torch.zeros_like(t)])
            idx = torch.arange(n, device=device)
            a, off = cand_m[op, idx], cand_t[op, idx]
            m, t = a @ m, (a @ t[:, :, None]).squeeze(-1) + off
        g = draws["grayscale"][:, None, None]
        a = torch.where(g, grey_proj.expand(n, 3, 3), eye)
        return a @ m, (a @ t[:, :, None]).squeeze(-1)

    @staticmethod
    def add_grain(
        x: torch.Tensor, std: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Adds grey Gaussian noise of a per-sample std (0 to `grain`), the same on all channels.

        Why: photos carry a per-image noise level (sensor, JPEG, film grain) that every crop of
        the image shares and colour jitter leaves alone, so SwAV can match two views by how
        noisy they are instead of by what they show; noise of a random level per crop makes
        that cue useless. Grey because luminance noise is what cameras and the generated pool
        add.
        """
        n, _, h, w = x.shape
        gdev = generator.device if generator is not None else x.device
        noise = torch.randn(n, 1, h, w, generator=generator, device=gdev).to(x.device, x.dtype)
        return x.add_(noise.mul_(std.to(x.dtype)[:, None, None, None])).clamp_(0.0, 1.0)

    def blur(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian blur with one kernel per sample (grouped convolution)."""
        n, ch, h, w = x.shape
        radius = self.radius
        kern = _gaussian_kernels(sigma, radius).to(x.dtype).repeat_interleave(ch, dim=0)
        mode = "reflect" if radius < min(h, w) else "replicate"
        y = x.reshape(1, n * ch, h, w)
        y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode=mode),
                     kern[:, None, None, :], groups=n * ch)
        y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode=mode),
                     kern[:, None, :, None], groups=n * ch)
        return y.reshape(n, ch, h, w)

    def forward(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        strength: float = 1.0,
    ) -> torch.Tensor:
        """Distorts a float batch in [0, 1]; `strength` < 1 scales the colour jitter down
        (`PhotometricParams.ramped`)."""
        if x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise ValueError(f"expected a float [N, 3, h, w] batch, got {x.dtype} {list(x.shape)}")
        n = x.shape[0]
        if n == 0:
            return x
        params = self.params if strength >= 1.0 else self.params.ramped(strength)
        draws = self.sample(n, x.device, generator, params)
        mean_rgb = x.float().mean(dim=(2, 3))
        m, t = self.colour_affine(draws, mean_rgb)
        y = torch.einsum("nij,njhw->nihw", m.to(x.dtype), x) + t.to(x.dtype)[:, :, None, None]
        y = y.clamp_(0.0, 1.0)
        if self.params.grain > 0:
            y = self.add_grain(y, draws["grain"], generator)
        if bool(self.params.p_blur > 0):
            y = self.blur(y, draws["sigma"]).clamp_(0.0, 1.0)
        return y
