"""Shared test doubles and tiny networks, so that tests in several folders build the same small parts one way.

Test files import it as ``from support import ...``: ``tests/`` is on ``sys.path`` because pytest, in its default
``prepend`` import mode, puts the folder of ``tests/conftest.py`` (a folder without ``__init__.py``) there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.nets import DiffusionModelUNet
from torch import nn

from monai_disc.networks.denoiser import MaskConditionedUNet
from monai_disc.networks.mask_encoder import MaskEncoder

__all__ = ["MIL_GRADES", "TINY_MIL_TRAIN", "CallLog", "PoolAutoencoder", "tiny_denoiser", "tiny_unet"]

#: (primary, secondary) grade pairs that small synthetic feature-bag sets cycle through
MIL_GRADES = [(0, 0), (1, 1), (1, 2), (2, 1), (2, 2), (2, 3), (3, 2), (3, 3)]
#: a TransMIL training that takes seconds on a CPU (the lambda sweep's and the study's tests)
TINY_MIL_TRAIN = {
    "network": "transmil_toy",
    "network_kwargs": {"dim": 32, "heads": 2, "landmarks": 16},
    "lr": 2e-3,
    "device": "cpu",
    "tensorboard": False,
    "max_epochs": 2,
    "patience": 2,
}


def tiny_unet(cross_attention_dim: int = 32) -> DiffusionModelUNet:
    """A two-level, cross-attending 3-channel UNet: the smallest one `MaskConditionedUNet` accepts.

    Args:
        cross_attention_dim: width of the context tokens it attends to.

    Returns:
        the UNet, with MONAI's initialisation (zero output layers) from the current torch seed.
    """
    return DiffusionModelUNet(
        spatial_dims=2,
        in_channels=3,
        out_channels=3,
        channels=(16, 32),
        attention_levels=(False, True),
        num_res_blocks=1,
        num_head_channels=16,
        norm_num_groups=8,
        with_conditioning=True,
        cross_attention_dim=cross_attention_dim,
    )


def tiny_denoiser(seed: int = 0, std: float = 0.05) -> MaskConditionedUNet:
    """A tiny mask-conditioned denoiser whose zero-initialised parameters are refilled with noise.

    MONAI zeroes the UNet's output layers, so a fresh denoiser predicts zero whatever x, t and the mask; the
    refill makes each input give its own output, which is what tests compare.

    Args:
        seed: torch seed for the weights (the same seed gives the same network).
        std: standard deviation of the normal noise put into the zero-initialised parameters.

    Returns:
        the denoiser in eval mode (16 tokens of width 32 from a 4x4 token grid).
    """
    torch.manual_seed(seed)
    net = MaskConditionedUNet(tiny_unet(), MaskEncoder(context_dim=32, channels=(16, 32), token_grid=4))
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0.0, std)
    return net.eval()


class PoolAutoencoder(nn.Module):
    """Test double of the first-stage interface: 4x average pooling down, nearest upsampling up.

    The random test denoiser drives latents to about +-200, so the default scale brings tiles into [-1, 1]
    rather than letting the final clamp hide differences.

    Args:
        scale_factor: the latent scale, a buffer as in the real autoencoder.
        with_factor: whether it declares ``downsample_factor`` (False: callers must find the factor by encoding).
    """

    def __init__(self, scale_factor: float = 200.0, with_factor: bool = True) -> None:
        super().__init__()
        self.register_buffer("scale_factor", torch.tensor(scale_factor))
        if with_factor:
            self.downsample_factor = 4
        self.decoded_batches: list[int] = []  # batch size of every decode call

    def encode_stage_2_inputs(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 4)

    def decode_stage_2_outputs(self, z: torch.Tensor) -> torch.Tensor:
        self.decoded_batches.append(z.shape[0])
        return F.interpolate(z, scale_factor=4, mode="nearest")


class CallLog:
    """Forward hook that records the batch size of every call of a module (how many branches a sampler batched).

    Args:
        module: the module to watch; ``handle.remove()`` stops the log.
    """

    def __init__(self, module: nn.Module) -> None:
        self.batches: list[int] = []
        self.handle = module.register_forward_hook(lambda m, args, out: self.batches.append(out.shape[0]))
