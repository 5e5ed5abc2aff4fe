"""Torch modules: the VQ-f4 first stage, the mask encoder and denoiser, and the graders.

The paper-size TransMIL is the class itself (``TransMIL(in_features)``); the submodule `transmil` is not
shadowed by a factory of the same name, so config targets like ``monai_disc.networks.transmil.transmil_toy`` resolve.
"""

from __future__ import annotations

from .autoencoder import (
    CodebookQuantizer,
    VQAutoencoder,
    VQDecoder,
    VQEncoder,
    compute_scale_factor,
    convert_compvis_vq_state_dict,
    load_compvis_vq_f4,
    load_vq_weights,
    vq_f4,
    vq_f4_toy,
)
from .carcinonet import CarcinoNet, carcinonet_toy, load_encoder_weights
from .denoiser import MaskConditionedUNet, mask_ldm_toy, mask_ldm_vq_f4
from .features import FeatureBagDataset, FeatureExtractor, build_extractor, extract_bag_features
from .mask_encoder import MaskEncoder
from .nystrom import NystromAttention, moore_penrose_iter_pinv
from .transmil import PPEG, TransLayer, TransMIL, pad_to_square, transmil_toy
from .weights import WeightsError, load_weights, read_state_dict

__all__ = [
    "FeatureBagDataset",
    "FeatureExtractor",
    "build_extractor",
    "extract_bag_features",
    "MaskConditionedUNet",
    "MaskEncoder",
    "NystromAttention",
    "moore_penrose_iter_pinv",
    "mask_ldm_toy",
    "mask_ldm_vq_f4",
    "PPEG",
    "TransLayer",
    "TransMIL",
    "pad_to_square",
    "transmil_toy",
    "CarcinoNet",
    "carcinonet_toy",
    "load_encoder_weights",
    "CodebookQuantizer",
    "VQAutoencoder",
    "VQDecoder",
    "VQEncoder",
    "compute_scale_factor",
    "convert_compvis_vq_state_dict",
    "load_compvis_vq_f4",
    "load_vq_weights",
    "vq_f4",
    "vq_f4_toy",
    "WeightsError",
    "load_weights",
    "read_state_dict",
]
