"""VQ-regularised autoencoder (CompVis "vq-f4" topology) built from MONAI's autoencoder blocks.

The encoder/decoder are MONAI's ``monai.networks.nets.autoencoderkl.Encoder`` / ``Decoder`` (ResNet blocks,
asymmetric-pad stride-2 downsampling, nearest x2 + conv upsampling, GroupNorm(32, eps 1e-6), single-head
spatial attention in the mid block), which reproduce the CompVis layer for layer but for one detail: CompVis
applies a swish between ``norm_out`` and ``conv_out`` and MONAI does not. :class:`VQEncoder` and
:class:`VQDecoder` add that activation, so CompVis weights give the same numbers. The quantiser is a small own
module (:class:`CodebookQuantizer`) because MONAI's ``EMAQuantizer`` learns its codebook by moving averages,
whereas CompVis codebooks are learned by gradient with a two-term loss.

:func:`convert_compvis_vq_state_dict` maps CompVis/taming key names (``encoder.down.0.block.1.conv1.weight``,
``quantize.embedding.weight``, ...) onto this module's, and :func:`load_compvis_vq_f4` loads a CompVis vq-f4
checkpoint file (``model.ckpt`` of ``vq-f4.zip``).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution
from monai.networks.nets.autoencoderkl import Decoder, Encoder
from monai.utils import ensure_tuple_rep

__all__ = [
    "CodebookQuantizer",
    "VQEncoder",
    "VQDecoder",
    "VQAutoencoder",
    "vq_f4",
    "vq_f4_toy",
    "compute_scale_factor",
    "convert_compvis_vq_state_dict",
    "load_compvis_vq_f4",
    "load_vq_weights",
]

# Largest distance matrix (rows x codebook entries) the quantiser builds at once: bounds memory at 512 px
# (a 128x128 latent against 8192 codes would otherwise be 512 MiB per image).
_MAX_DISTANCE_ELEMENTS = 2**26


def _insert_swish_before_conv_out(blocks: nn.ModuleList) -> None:
    """Insert a SiLU between the final GroupNorm and the output convolution (CompVis ``nonlinearity``)."""
    if not isinstance(blocks[-2], nn.GroupNorm):
        raise RuntimeError("unexpected MONAI Encoder/Decoder layout: the block before conv_out is not a GroupNorm")
    blocks.insert(len(blocks) - 1, nn.SiLU())


class VQEncoder(Encoder):
    """MONAI's ``Encoder`` with the swish that CompVis applies before ``conv_out``.

    Args:
        in_channels: image channels.
        channels: output channels per level (CompVis ``ch * ch_mult``); ``len(channels) - 1`` downsamplings.
        out_channels: latent channels (CompVis ``z_channels``; ``double_z`` is False for VQ models).
        num_res_blocks: residual blocks per level.
        attention_levels: levels with attention after each residual block (none in vq-f4).
        norm_num_groups: GroupNorm groups (32 in CompVis).
        norm_eps: GroupNorm epsilon (1e-6 in CompVis).
        use_flash_attention: use ``scaled_dot_product_attention`` in the mid-block attention (the default: same
            result to float rounding, far less memory; a 512 px tile's mid block attends over 16,384 tokens).
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        out_channels: int,
        num_res_blocks: Sequence[int],
        attention_levels: Sequence[bool],
        norm_num_groups: int = 32,
        norm_eps: float = 1e-6,
        use_flash_attention: bool = True,
    ) -> None:
        super().__init__(
            spatial_dims=2,
            in_channels=in_channels,
            channels=channels,
            out_channels=out_channels,
            num_res_blocks=num_res_blocks,
            norm_num_groups=norm_num_groups,
            norm_eps=norm_eps,
            attention_levels=attention_levels,
            with_nonlocal_attn=True,
            include_fc=True,
            use_combined_linear=False,
            use_flash_attention=use_flash_attention,
        )
        _insert_swish_before_conv_out(self.blocks)


class VQDecoder(Decoder):
    """MONAI's ``Decoder`` with the swish that CompVis applies before ``conv_out``.

    Args:
        channels: encoder channels per level (the decoder runs them in reverse).
        in_channels: latent channels (CompVis ``z_channels``).
        out_channels: image channels.
        num_res_blocks: residual blocks per level *in the decoder*; CompVis uses the encoder's count plus one.
        attention_levels: levels with attention after each residual block (none in vq-f4).
        norm_num_groups: GroupNorm groups.
        norm_eps: GroupNorm epsilon.
        use_flash_attention: use ``scaled_dot_product_attention`` in the mid-block attention (the default).
    """

    def __init__(
        self,
        channels: Sequence[int],
        in_channels: int,
        out_channels: int,
        num_res_blocks: Sequence[int],
        attention_levels: Sequence[bool],
        norm_num_groups: int = 32,
        norm_eps: float = 1e-6,
        use_flash_attention: bool = True,
    ) -> None:
        super().__init__(
            spatial_dims=2,
            channels=channels,
            in_channels=in_channels,
            out_channels=out_channels,
            num_res_blocks=num_res_blocks,
            norm_num_groups=norm_num_groups,
            norm_eps=norm_eps,
            attention_levels=attention_levels,
            with_nonlocal_attn=True,
            use_convtranspose=False,
            include_fc=True,
            use_combined_linear=False,
            use_flash_attention=use_flash_attention,
        )
        _insert_swish_before_conv_out(self.blocks)


class CodebookQuantizer(nn.Module):
    """Nearest-codebook-entry quantiser with a gradient-learned codebook (CompVis ``VectorQuantizer2``).

    Distances, the loss and the straight-through estimator follow CompVis, so trained CompVis codebooks pick the
    same indices. It runs with autocast off, in the codebook's dtype (distances between nearby codes need at
    least float32).

    Args:
        num_embeddings: codebook size (``n_embed``).
        embedding_dim: code dimension (``embed_dim``).
        beta: weight of the second loss term.
        legacy: CompVis's default form ``||sg(z_q) - z||^2 + beta * ||z_q - sg(z)||^2`` (the checkpoints were
            trained with it); False gives the VQ-VAE paper's ``beta * ||sg(z_q) - z||^2 + ||z_q - sg(z)||^2``.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, beta: float = 0.25, legacy: bool = True) -> None:
        super().__init__()
        if num_embeddings < 1 or embedding_dim < 1:
            raise ValueError(
                f"num_embeddings and embedding_dim must be positive, got {num_embeddings}, {embedding_dim}"
            )
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.beta = beta
        self.legacy = legacy
        self.embedding = nn.Embedding(num_embeddings, embedding_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / num_embeddings, 1.0 / num_embeddings)

    def _nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each row of `flat` (N, D), in chunks that bound memory."""
        weight = self.embedding.weight
        w_sq = torch.sum(weight**2, dim=1)
        rows = max(1, _MAX_DISTANCE_ELEMENTS // self.num_embeddings)
        out = []
        for chunk in flat.split(rows):
            dist = torch.sum(chunk**2, dim=1, keepdim=True) + w_sq - 2 * torch.matmul(chunk, weight.t())
            out.append(torch.argmin(dist, dim=1))
        return torch.cat(out)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantise a (B, D, H, W) latent.

        Returns:
            ``z_q`` (B, D, H, W) with straight-through gradients to `z`, the scalar codebook/commitment loss, and
            the code indices (B, H, W).
        """
        if z.ndim != 4 or z.shape[1] != self.embedding_dim:
            raise ValueError(f"expected a (B, {self.embedding_dim}, H, W) latent, got shape {tuple(z.shape)}")
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.to(self.embedding.weight.dtype)
            b, d, h, w = z.shape
            z_last = z.permute(0, 2, 3, 1).contiguous()
            indices = self._nearest(z_last.view(-1, d))
            z_q = self.embedding(indices).view(z_last.shape)
            if self.legacy:
                loss = torch.mean((z_q.detach() - z_last) ** 2) + self.beta * torch.mean((z_q - z_last.detach()) ** 2)
            else:
                loss = self.beta * torch.mean((z_q.detach() - z_last) ** 2) + torch.mean((z_q - z_last.detach()) ** 2)
            z_q = z_last + (z_q - z_last).detach()
            z_q = z_q.permute(0, 3, 1, 2).contiguous()
        return z_q, loss, indices.view(b, h, w)

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """Code vectors (B, D, H, W) for indices (B, H, W)."""
        return self.embedding(indices.long()).permute(0, 3, 1, 2).contiguous()


class VQAutoencoder(nn.Module):
    """VQ-regularised autoencoder with CompVis ``VQModel`` semantics (the first stage of the latent diffusion).

    ``encode`` returns the *pre-quantisation* latent (what CompVis LDMs diffuse) and ``decode`` quantises before
    decoding, as CompVis's ``VQModelInterface``. ``encode_stage_2_inputs`` / ``decode_stage_2_outputs`` are the
    hooks MONAI's ``LatentDiffusionInferer`` calls; they do not scale: pass ``float(model.scale_factor)`` to the
    inferer. ``scale_factor`` is a buffer (1 / std of training latents, see :func:`compute_scale_factor`) so it
    travels with the weights. Images are float in [-1, 1], (B, C, H, W), H and W divisible by
    ``2 ** (len(channels) - 1)``.

    Args:
        in_channels: image channels.
        out_channels: reconstructed image channels.
        channels: encoder channels per level (CompVis ``ch * ch_mult``). vq-f4: (128, 256, 512).
        num_res_blocks: residual blocks per encoder level (the decoder uses one more, as CompVis).
        z_channels: encoder output / decoder input channels.
        embed_dim: code dimension (``quant_conv`` maps ``z_channels -> embed_dim``).
        n_embed: codebook size.
        beta: weight in the quantisation loss (see :class:`CodebookQuantizer`).
        legacy_loss: CompVis's default ("legacy") form of the quantisation loss.
        attention_levels: per-level attention after residual blocks; default none (vq-f4).
        norm_num_groups: GroupNorm groups; every entry of `channels` must be divisible by it.
        norm_eps: GroupNorm epsilon.
        use_flash_attention: fused attention (``scaled_dot_product_attention``) in the mid blocks; the default.
            Off gives MONAI's explicit attention matrix (3.4 GB more to encode one 512 px tile in float32).
        use_checkpoint: activation checkpointing of encoder and decoder (saves memory when training).
        scale_factor: initial value of the ``scale_factor`` buffer.

    Raises:
        ValueError: channels not divisible by `norm_num_groups` or mismatched sequence lengths.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        channels: Sequence[int] = (128, 256, 512),
        num_res_blocks: Sequence[int] | int = 2,
        z_channels: int = 3,
        embed_dim: int = 3,
        n_embed: int = 8192,
        beta: float = 0.25,
        legacy_loss: bool = True,
        attention_levels: Sequence[bool] | None = None,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-6,
        use_flash_attention: bool = True,
        use_checkpoint: bool = False,
        scale_factor: float = 1.0,
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if any(c % norm_num_groups for c in channels):
            raise ValueError(
                f"every entry of channels {channels} must be divisible by norm_num_groups={norm_num_groups}"
            )
        levels = len(channels)
        nrb = ensure_tuple_rep(num_res_blocks, levels)
        attn = ensure_tuple_rep(False, levels) if attention_levels is None else tuple(bool(a) for a in attention_levels)
        if len(nrb) != levels or len(attn) != levels:
            raise ValueError(
                f"num_res_blocks {nrb} and attention_levels {attn} need one entry per level of channels {channels}"
            )
        self.channels = channels
        self.downsample_factor = 2 ** (levels - 1)
        self.z_channels = z_channels
        self.embed_dim = embed_dim
        self.use_checkpoint = use_checkpoint

        self.encoder = VQEncoder(
            in_channels=in_channels,
            channels=channels,
            out_channels=z_channels,
            num_res_blocks=nrb,
            attention_levels=attn,
            norm_num_groups=norm_num_groups,
            norm_eps=norm_eps,
            use_flash_attention=use_flash_attention,
        )
        self.decoder = VQDecoder(
            channels=channels,
            in_channels=z_channels,
            out_channels=out_channels,
            num_res_blocks=tuple(n + 1 for n in nrb),
            attention_levels=attn,
            norm_num_groups=norm_num_groups,
            norm_eps=norm_eps,
            use_flash_attention=use_flash_attention,
        )
        self.quant_conv = Convolution(2, z_channels, embed_dim, kernel_size=1, padding=0, conv_only=True)
        self.post_quant_conv = Convolution(2, embed_dim, z_channels, kernel_size=1, padding=0, conv_only=True)
        self.quantizer = CodebookQuantizer(n_embed, embed_dim, beta=beta, legacy=legacy_loss)
        self.register_buffer("scale_factor", torch.tensor(float(scale_factor)))
        self.scale_factor: torch.Tensor

    def _run(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            out: torch.Tensor = torch.utils.checkpoint.checkpoint(module, x, use_reentrant=False)
            return out
        return module(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, C, H, W) in [-1, 1] -> pre-quantisation latent (B, embed_dim, H/f, W/f)."""
        f = self.downsample_factor
        if x.ndim != 4 or x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f"expected (B, C, H, W) with H and W divisible by {f}, got shape {tuple(x.shape)}")
        return self.quant_conv(self._run(self.encoder, x))

    def quantize(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Latent -> (quantised latent, quantisation loss, indices (B, h, w))."""
        return self.quantizer(h)

    def decode_quantized(self, z_q: torch.Tensor) -> torch.Tensor:
        """Quantised latent -> image (``post_quant_conv`` then decoder)."""
        return self._run(self.decoder, self.post_quant_conv(z_q))

    def decode(self, h: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        """Latent -> image; quantises first unless `force_not_quantize` (CompVis ``VQModelInterface.decode``)."""
        z_q = h if force_not_quantize else self.quantizer(h)[0]
        return self.decode_quantized(z_q)

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices (B, h, w) -> image."""
        return self.decode_quantized(self.quantizer.embed(indices))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image -> (reconstruction, quantisation loss)."""
        z_q, loss, _ = self.quantize(self.encode(x))
        return self.decode_quantized(z_q), loss

    def encode_stage_2_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Latent the diffusion model works on (unscaled; the inferer multiplies by its scale factor)."""
        return self.encode(x)

    def decode_stage_2_outputs(self, z: torch.Tensor) -> torch.Tensor:
        """Image from a (descaled) diffusion latent; quantises first, as CompVis LDMs do."""
        return self.decode(z)


def vq_f4(**overrides: Any) -> VQAutoencoder:
    """The CompVis vq-f4 configuration (ch 128, ch_mult (1, 2, 4), 2 res blocks, z 3, 8192 codes of dim 3).

    Args:
        overrides: any :class:`VQAutoencoder` argument, e.g. ``use_flash_attention=True``.
    """
    cfg: dict[str, Any] = dict(
        in_channels=3,
        out_channels=3,
        channels=(128, 256, 512),
        num_res_blocks=2,
        z_channels=3,
        embed_dim=3,
        n_embed=8192,
        beta=0.25,
    )
    cfg.update(overrides)
    return VQAutoencoder(**cfg)


def vq_f4_toy(**overrides: Any) -> VQAutoencoder:
    """A small f=4 model for the toy data and tests: channels (32, 64, 64), 1 res block, 512 codes of dim 3.

    A 64 px tile gives a 3x16x16 latent, as vq-f4 does.

    Args:
        overrides: any :class:`VQAutoencoder` argument.
    """
    cfg: dict[str, Any] = dict(channels=(32, 64, 64), num_res_blocks=1, n_embed=512)
    cfg.update(overrides)
    return vq_f4(**cfg)


def _batch_images(batch: Any, image_key: str) -> torch.Tensor:
    if isinstance(batch, Mapping):
        if image_key not in batch:
            raise ValueError(f"batch has no key {image_key!r}; keys are {sorted(batch)}")
        return batch[image_key]
    if isinstance(batch, (list, tuple)):
        return batch[0]
    return batch


@torch.no_grad()
def compute_scale_factor(
    model: VQAutoencoder,
    data: Iterable[Any],
    image_key: str = "image",
    max_batches: int | None = None,
    device: torch.device | str | None = None,
) -> float:
    """Set ``model.scale_factor`` to 1 / std of the pre-quantisation latents of `data`, and return it.

    CompVis's ``scale_by_std`` does this on one batch; here the standard deviation pools every element of up to
    `max_batches` batches (float64 running sums), so the value is stable for small batches.

    Args:
        model: the trained autoencoder.
        data: a DataLoader or iterable of batches: dicts with `image_key`, tensors, or (image, ...) tuples.
        image_key: key of the images in dict batches.
        max_batches: stop after this many batches (None: all).
        device: where to run the encoder (default: the model's device).

    Returns:
        The new scale factor.

    Raises:
        ValueError: no batch, or constant latents (std 0).
    """
    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    count, total, total_sq = 0, 0.0, 0.0
    try:
        for i, batch in enumerate(data):
            if max_batches is not None and i >= max_batches:
                break
            images = torch.as_tensor(_batch_images(batch, image_key)).to(device=device, dtype=torch.float32)
            h = model.encode_stage_2_inputs(images).double()
            count += h.numel()
            total += float(h.sum())
            total_sq += float((h * h).sum())
    finally:
        model.train(was_training)
    if count < 2:
        raise ValueError("compute_scale_factor needs at least one batch with latents; the data was empty")
    var = (total_sq - total * total / count) / (count - 1)
    if not var > 0:
        raise ValueError(f"latent standard deviation is {math.sqrt(max(var, 0.0))}; cannot compute a scale factor")
    scale = 1.0 / math.sqrt(var)
    model.scale_factor.fill_(scale)
    return scale


# ------------------------------------------------------------------------------------------------ conversion

_TOP_LEVEL = ("encoder.", "decoder.", "quantize.", "quant_conv.", "post_quant_conv.")
_CKPT_PREFIX = "first_stage_model."


def _levels(keys: Iterable[str], part: str) -> dict[int, tuple[int, int]]:
    """{level: (number of res blocks, number of attention blocks)} of ``<part>.<level>.block|attn.<j>`` keys."""
    pattern = re.compile(rf"^{part}\.(\d+)\.(block|attn)\.(\d+)\.")
    found: dict[int, dict[str, set[int]]] = {}
    for key in keys:
        match = pattern.match(key)
        if match:
            level = found.setdefault(int(match.group(1)), {"block": set(), "attn": set()})
            level[match.group(2)].add(int(match.group(3)))
    return {lvl: (len(v["block"]), len(v["attn"])) for lvl, v in found.items()}


def _block_order(keys: list[str], decoder: bool) -> list[tuple[str, str]]:
    """(CompVis module prefix, kind) in forward order, matching the ``blocks`` list of VQEncoder/VQDecoder."""
    part = "up" if decoder else "down"
    levels = _levels(keys, part)
    if not levels or sorted(levels) != list(range(len(levels))):
        raise ValueError(f"cannot find the {part}.<level>.block.<j> layers of the {'de' if decoder else 'en'}coder")
    mid = [("mid.block_1", "res"), ("mid.attn_1", "attn"), ("mid.block_2", "res")]
    order: list[tuple[str, str]] = [("conv_in", "conv")]
    if decoder:
        order += mid
    level_ids = range(len(levels) - 1, -1, -1) if decoder else range(len(levels))
    for lvl in level_ids:
        n_blocks, n_attn = levels[lvl]
        if n_attn not in (0, n_blocks):
            raise ValueError(f"{part}.{lvl} has {n_blocks} res blocks but {n_attn} attention blocks")
        for j in range(n_blocks):
            order.append((f"{part}.{lvl}.block.{j}", "res"))
            if n_attn:
                order.append((f"{part}.{lvl}.attn.{j}", "attn"))
        if decoder and lvl != 0:
            order.append((f"up.{lvl}.upsample", "up"))
        if not decoder and lvl != len(levels) - 1:
            order.append((f"down.{lvl}.downsample", "down"))
    if not decoder:
        order += mid
    order += [("norm_out", "norm"), ("", "swish"), ("conv_out", "conv")]
    return order


def _rename_in_block(kind: str, name: str) -> str | None:
    """CompVis parameter name inside one module -> ours; None if the name is not expected there."""
    if kind == "conv" and name in ("weight", "bias"):
        return f"conv.{name}"
    if kind == "norm" and name in ("weight", "bias"):
        return name
    if kind == "res":
        head, _, tail = name.partition(".")
        if head in ("norm1", "norm2") and tail in ("weight", "bias"):
            return name
        if head in ("conv1", "conv2", "nin_shortcut") and tail in ("weight", "bias"):
            return f"{head}.conv.{tail}"
        return None
    if kind == "attn":
        head, _, tail = name.partition(".")
        if head == "norm" and tail in ("weight", "bias"):
            return name
        target = {"q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "out_proj"}.get(head)
        if target and tail in ("weight", "bias"):
            return f"attn.{target}.{tail}"
        return None
    if kind == "down" and name in ("conv.weight", "conv.bias"):
        return f"conv.{name}"
    if kind == "up" and name in ("conv.weight", "conv.bias"):
        return f"postconv.{name}"
    return None


def _convert_coder(sd: Mapping[str, torch.Tensor], part: str, out: dict[str, torch.Tensor]) -> set[str]:
    """Convert ``encoder.*`` or ``decoder.*`` keys into `out`; return the CompVis keys used."""
    keys = [k[len(part) + 1 :] for k in sd if k.startswith(part + ".")]
    used: set[str] = set()
    for idx, (prefix, kind) in enumerate(_block_order(keys, decoder=part == "decoder")):
        if kind == "swish":
            continue
        for key in keys:
            if not key.startswith(prefix + "."):
                continue
            new = _rename_in_block(kind, key[len(prefix) + 1 :])
            if new is None:
                continue
            value = sd[f"{part}.{key}"]
            if kind == "attn" and value.ndim == 4:  # 1x1 conv weight -> linear weight
                value = value.reshape(value.shape[0], value.shape[1])
            out[f"{part}.blocks.{idx}.{new}"] = value
            used.add(f"{part}.{key}")
    return used


def convert_compvis_vq_state_dict(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Map a CompVis ``VQModel`` state dict onto :class:`VQAutoencoder` key names.

    Accepts the bare state dict, a Lightning checkpoint ``{"state_dict": ...}``, or a whole CompVis LDM
    checkpoint (keys under ``first_stage_model.``; its ``scale_factor`` buffer, if any, is kept). The
    ``loss.*`` keys (discriminator and LPIPS of the training loss) are dropped. The layout (levels, blocks per
    level, attention) is read from the keys, so any CompVis VQ configuration with ``ch_mult[0] == 1`` converts.

    Args:
        state_dict: the CompVis weights.

    Returns:
        A state dict for :class:`VQAutoencoder` (``scale_factor`` 1.0 unless the checkpoint held one).

    Raises:
        ValueError: keys that belong to no known module (listed), or a layout this model cannot express
            (``quantize.used`` index remapping, ``conv_shortcut`` residual shortcuts).
    """
    sd: Mapping[str, Any] = state_dict
    if "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    scale = sd.get("scale_factor")
    if any(k.startswith(_CKPT_PREFIX) for k in sd):
        sd = {k[len(_CKPT_PREFIX) :]: v for k, v in sd.items() if k.startswith(_CKPT_PREFIX)}
    sd = {k: v for k, v in sd.items() if not k.startswith("loss.") and k != "scale_factor"}
    non_tensor = sorted(k for k, v in sd.items() if not isinstance(v, torch.Tensor))
    if non_tensor:
        raise ValueError(f"state dict entries are not tensors: {non_tensor[:10]}")
    if "quantize.used" in sd:
        raise ValueError("the checkpoint uses codebook index remapping (quantize.used), which is not supported")
    unknown = sorted(k for k in sd if not k.startswith(_TOP_LEVEL))
    if unknown:
        raise ValueError(
            f"unexpected keys (not a CompVis VQModel?): {unknown[:20]}{' ...' if len(unknown) > 20 else ''}"
        )

    out: dict[str, torch.Tensor] = {}
    used = _convert_coder(sd, "encoder", out) | _convert_coder(sd, "decoder", out)
    for src, dst in (
        ("quantize.embedding.weight", "quantizer.embedding.weight"),
        ("quant_conv.weight", "quant_conv.conv.weight"),
        ("quant_conv.bias", "quant_conv.conv.bias"),
        ("post_quant_conv.weight", "post_quant_conv.conv.weight"),
        ("post_quant_conv.bias", "post_quant_conv.conv.bias"),
    ):
        if src in sd:
            out[dst] = sd[src]
            used.add(src)
    left = sorted(set(sd) - used)
    if left:
        raise ValueError(
            f"unexpected keys that map to no layer of VQAutoencoder: {left[:20]}{' ...' if len(left) > 20 else ''}"
        )
    out["scale_factor"] = torch.as_tensor(1.0 if scale is None else scale, dtype=torch.float32).reshape(())
    return out


def _read_compvis(path: str | os.PathLike, map_location: str | torch.device) -> dict[str, torch.Tensor]:
    """A CompVis VQ checkpoint file, converted to :class:`VQAutoencoder` keys (errors name the file)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CompVis VQ checkpoint not found: {path}")
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle errors come in several types
        raise ValueError(
            f"{path}: cannot be loaded with torch.load(weights_only=True) ({e}); save only its 'state_dict' "
            "in a trusted environment and load that file"
        ) from e
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: expected a state dict or a checkpoint dict, got {type(raw).__name__}")
    try:
        return convert_compvis_vq_state_dict(raw)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


def _load_checked(model: nn.Module, state: Mapping[str, torch.Tensor], path: str, what: str) -> None:
    """``model.load_state_dict(state)`` after :func:`~monai_disc.networks.weights.weights_mismatch`'s check: one
    error naming the file and the first missing, extra or misshapen keys."""
    from monai_disc.networks.weights import WeightsError, weights_mismatch

    problem = weights_mismatch(model.state_dict(), state)
    if problem:
        raise WeightsError(f"cannot load {path}: does not fit {what}: {problem}")
    model.load_state_dict(state)


def load_compvis_vq_f4(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", **overrides: Any
) -> VQAutoencoder:
    """Build :func:`vq_f4` (with `overrides`) and load a CompVis vq-f4 checkpoint file into it.

    The file is read with ``torch.load(weights_only=True)``; a Lightning checkpoint that holds non-tensor
    objects must first be reduced to its ``state_dict`` (``torch.save(ckpt["state_dict"], out)`` in a trusted
    environment).

    Args:
        path: ``model.ckpt`` (from ``vq-f4.zip``), a bare state dict, or an LDM checkpoint.
        map_location: passed to ``torch.load``.
        overrides: :class:`VQAutoencoder` arguments that differ from vq-f4 (e.g. ``use_checkpoint=True``).

    Returns:
        The model with the weights loaded, in eval mode.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: the file cannot be read with ``weights_only=True``, or its keys or shapes do not match
            the model (the message names the file and the keys).
    """
    converted = _read_compvis(path, map_location)
    model = vq_f4(**overrides)
    _load_checked(model, converted, os.fspath(path), f"the vq-f4 layout (overrides {overrides})")
    return model.eval()


def load_vq_weights(
    autoencoder: VQAutoencoder,
    path: str | os.PathLike | None = None,
    compvis_vq_f4: str | os.PathLike | None = None,
    map_location: str | torch.device = "cpu",
) -> VQAutoencoder:
    """Load first-stage weights into `autoencoder` in place: a CompVis checkpoint (converted) or this project's.

    The one loader the bundle configs call (``load_autoencoder`` / ``autoencoder`` expressions), so a config
    switches to the public CompVis vq-f4 weights by one key (``--compvis_vq_f4 /w/vq-f4/model.ckpt``) and keeps
    the same network definition. CompVis checkpoints carry no latent scale unless they are whole LDM checkpoints,
    so ``scale_factor`` becomes 1.0 (CompVis's own LDMs on vq-f4 use 1.0) or the checkpoint's.

    Args:
        autoencoder: the network to fill, e.g. ``vq_f4()`` (its layout must match the checkpoint).
        path: a state dict saved from :class:`VQAutoencoder` (what ``train_autoencoder.yaml`` writes); used when
            `compvis_vq_f4` is not given.
        compvis_vq_f4: a CompVis VQ checkpoint (``model.ckpt`` of ``vq-f4.zip``, a bare state dict or an LDM
            checkpoint), read with :func:`convert_compvis_vq_state_dict`; wins over `path`.
        map_location: passed to ``torch.load``.

    Returns:
        `autoencoder`, with the weights loaded (its mode and device unchanged).

    Raises:
        ValueError: neither file given, or keys and shapes that do not fit the network (the message names the
            file).
        FileNotFoundError: a given file does not exist.
    """
    if compvis_vq_f4:
        _load_checked(autoencoder, _read_compvis(compvis_vq_f4, map_location), os.fspath(compvis_vq_f4), "the network")
        return autoencoder
    if not path:
        raise ValueError("give the autoencoder's weights: a state dict path or compvis_vq_f4 (a CompVis checkpoint)")
    from monai_disc.networks.weights import NESTED_KEYS, read_state_dict

    path = os.fspath(path)
    state = read_state_dict(path, nested_keys=("autoencoder", *NESTED_KEYS))  # also a CheckpointSaver dict
    _load_checked(autoencoder, state, path, "the network (a CompVis checkpoint? pass it as compvis_vq_f4)")
    return autoencoder
