"""Where the shipped bundles are, and which of their weight files is which (named once for every door).

The bundles folder of a source checkout (``bundles/`` beside the package) is the default; every function that
reads shipped weights takes another folder too, e.g. a copy of the bundles elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["AUTOENCODER_WEIGHTS", "CARCINONET_WEIGHTS", "REPO_BUNDLES", "TRANSMIL_WEIGHTS", "bundle_file"]

#: The bundles folder of this source checkout.
REPO_BUNDLES = Path(__file__).resolve().parents[1] / "bundles"

#: The toy first stage (vq_f4_toy) every toy generator decodes with, relative to the bundles folder.
AUTOENCODER_WEIGHTS = "gleason_ldm/models/autoencoder.pt"
#: The toy CarcinoNet: the bundle's segmenter, the mask-fidelity ruler and the default feature extractor.
CARCINONET_WEIGHTS = "carcinonet/models/model.pt"
#: The toy TransMIL on the toy CarcinoNet's features.
TRANSMIL_WEIGHTS = "transmil/models/model.pt"


def bundle_file(relative: str | os.PathLike, bundles_dir: str | os.PathLike | None = None) -> Path:
    """``relative`` (e.g. :data:`CARCINONET_WEIGHTS`) inside ``bundles_dir``, :data:`REPO_BUNDLES` when None."""
    return Path(bundles_dir if bundles_dir is not None else REPO_BUNDLES).expanduser() / relative
