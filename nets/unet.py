"""The denoising U-Net (Ho et al. 2020, Appendix B, scaled down: 28×28 digits by default).

Layout for the default config (base 32, multipliers (1, 2, 2)):
    28×28×32 → 14×14×64 → 7×7×64, self-attention in the 7×7 bottleneck, and a decoder that
    upsamples back with a skip connection from every encoder stage.
Every residual block receives the timestep embedding (sinusoidal, then an MLP) and, for a
class-conditional model, a learned label embedding added to it (index ``num_classes`` = "no label").
Other datasets fit it with :func:`unet_for_data`: channels, size and classes from the data, and
:func:`preset_levels` for the size (64 pixels: one more level, attention at 16 and 8).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nets.pixels import IMAGE_SIZE


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of the U-Net; the defaults are the MNIST model a user gets from ``UNet()``."""

    in_channels: int = 1
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention_resolutions: tuple[int, ...] = (7,)
    image_size: int = IMAGE_SIZE
    dropout: float = 0.0
    num_groups: int = 8
    num_heads: int = 4
    num_classes: int = 0  # 0: unconditional; >0: class-conditional with a "no label" index

    def __post_init__(self):
        if self.in_channels < 1 or self.base_channels < 1 or self.num_res_blocks < 1:
            raise ValueError("in_channels, base_channels and num_res_blocks must be >= 1")
        if not self.channel_mults or any(m < 1 for m in self.channel_mults):
            raise ValueError(f"channel_mults must be positive integers, got {self.channel_mults}")
        for mult in self.channel_mults:
            if (self.base_channels * mult) % self.num_groups:
                raise ValueError(
                    f"channels {self.base_channels * mult} not divisible by num_groups "
                    f"{self.num_groups}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")
        size = self.image_size
        for _ in range(len(self.channel_mults) - 1):
            if size % 2:
                raise ValueError(f"image_size {self.image_size} cannot be halved "
                                 f"{len(self.channel_mults) - 1} times")
            size //= 2

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images it denoises."""
        return (self.in_channels, self.image_size, self.image_size)

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Feature-map sizes, full resolution first: (28, 14, 7) for the default."""
        return tuple(self.image_size // 2 ** i for i in range(len(self.channel_mults)))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channel_mults"] = list(self.channel_mults)
        d["attention_resolutions"] = list(self.attention_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown U-Net config keys: {sorted(unknown)}")
        d = dict(d)
        for key in ("channel_mults", "attention_resolutions"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


def preset_levels(size: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(channel_mults, attention_resolutions) of the preset for ``size``-pixel images: up to 32
    pixels three levels with attention at the bottleneck (28 → 7, 32 → 8, MNIST's measured
    default); above, one more level with attention where the map is 8-16 wide (64 → 16 and 8)."""
    if size <= 32:
        return (1, 2, 2), (size // 4,)
    return (1, 2, 2, 2), (size // 4, size // 8)


def unet_for_data(unet: dict, shape: tuple[int, int, int], num_classes: int) -> dict:
    """``unet`` (a config dict) fitted to images of ``shape`` (C, H, W) and ``num_classes`` (0:
    unconditional): channels, size and classes from the data; levels and attention follow the
    size where they are the preset of the size the dict had (the default), else stay as given.
    ValueError where the size cannot be halved as the levels need."""
    config = UNetConfig.from_dict(unet)
    c, h, w = shape
    if h != w:
        raise ValueError(f"images must be square, got {h}×{w}")
    levels = (config.channel_mults, config.attention_resolutions)
    if levels == preset_levels(config.image_size):
        levels = preset_levels(h)
    fitted = {**config.to_dict(), "in_channels": c, "image_size": h, "num_classes": num_classes,
              "channel_mults": list(levels[0]), "attention_resolutions": list(levels[1])}
    try:
        return UNetConfig.from_dict(fitted).to_dict()
    except ValueError as err:
        raise ValueError(f"{err}: choose an image size the U-Net's {len(levels[0])} levels can halve "
                         f"(a multiple of {2 ** (len(levels[0]) - 1)}; 28, 32 and 64 have presets)") from None


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer sinusoidal embedding of integer timesteps ``t`` (B,) → (B, dim), float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    """GroupNorm → SiLU → 3×3 conv, plus the embedding as a per-channel shift, twice; residual."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity (Ho et al. 2020)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out, H, W)
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H·W positions, residual."""

    def __init__(self, ch: int, heads: int, groups: int):
        super().__init__()
        if ch % heads:
            raise ValueError(f"attention channels {ch} not divisible by num_heads {heads}")
        self.heads = heads
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, heads, HW, C/heads)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, C/heads)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)  # (B, C, H/2, W/2)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, C, 2H, 2W)


class UNet(nn.Module):
    """ε/x0/v-predicting U-Net: ``forward(x (B,C,H,W), t (B,) int, y (B,) int | None) → (B,C,H,W)``."""

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        cfg = config if config is not None else UNetConfig()
        self.config = cfg
        ch0 = cfg.base_channels
        emb_dim = 4 * ch0
        self.time_mlp = nn.Sequential(nn.Linear(ch0, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # One extra row: index num_classes means "no label" (classifier-free guidance).
        self.label_emb = nn.Embedding(cfg.num_classes + 1, emb_dim) if cfg.num_classes else None

        def block(cin, cout):
            return ResBlock(cin, cout, emb_dim, cfg.dropout, cfg.num_groups)

        self.stem = nn.Conv2d(cfg.in_channels, ch0, 3, padding=1)
        self.down = nn.ModuleList()
        skip_chs, ch, size = [ch0], ch0, cfg.image_size
        for level, mult in enumerate(cfg.channel_mults):
            for _ in range(cfg.num_res_blocks):
                layers = [block(ch, ch0 * mult)]
                ch = ch0 * mult
                if size in cfg.attention_resolutions:
                    layers.append(AttentionBlock(ch, cfg.num_heads, cfg.num_groups))
                self.down.append(nn.ModuleList(layers))
                skip_chs.append(ch)
            if level != len(cfg.channel_mults) - 1:
                self.down.append(nn.ModuleList([Downsample(ch)]))
                skip_chs.append(ch)
                size //= 2
        self.mid = nn.ModuleList([block(ch, ch), AttentionBlock(ch, cfg.num_heads, cfg.num_groups),
                                  block(ch, ch)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mults))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [block(ch + skip_chs.pop(), ch0 * mult)]
                ch = ch0 * mult
                if size in cfg.attention_resolutions:
                    layers.append(AttentionBlock(ch, cfg.num_heads, cfg.num_groups))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                    size *= 2
                self.up.append(nn.ModuleList(layers))
        self.out = nn.Sequential(nn.GroupNorm(cfg.num_groups, ch), nn.SiLU(),
                                 nn.Conv2d(ch, cfg.in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def _run(self, layers: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in layers:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None):
        emb = self.time_mlp(timestep_embedding(t, self.config.base_channels))  # (B, E)
        if self.label_emb is not None:
            if y is None:  # unlabelled call of a conditional model: the "no label" row
                y = torch.full_like(t, self.config.num_classes)
            emb = emb + self.label_emb(y)
        elif y is not None:
            raise ValueError("this U-Net is unconditional (num_classes=0) but got labels y")
        h = self.stem(x)  # (B, C0, H, W)
        skips = [h]
        for layers in self.down:
            h = self._run(layers, h, emb)
            skips.append(h)
        h = self._run(self.mid, h, emb)  # (B, C, H/4, W/4)
        for layers in self.up:
            h = self._run(layers, torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)  # (B, C_in, H, W)
