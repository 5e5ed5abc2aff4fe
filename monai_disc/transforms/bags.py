"""Load one slide's bag as a feature matrix (N, D): from a cached feature file, or by embedding its tiles."""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends

__all__ = ["LoadBag", "LoadBagD", "LoadBagDict", "LoadBagd"]


class LoadBag(Transform):
    """A slide's bag -> its instance features, float32 (N, D), the input of a MIL network.

    A bag is a feature file (``.pt`` holding a dict with ``features`` (N, D), as
    :func:`monai_disc.networks.extract_bag_features` writes, or the (N, D) tensor itself), or a sequence of
    tile paths, which ``extractor`` embeds ``batch_size`` tiles at a time after ``loader`` reads each one.

    Args:
        extractor: tiles (B, 3, H, W) in [-1, 1] -> features (B, D); needed only for tile bags.
        loader: tile path -> (3, H, W) tensor in [-1, 1]; defaults to
            :func:`monai_disc.data.tilesets.tile_loader`.
        batch_size: tiles per forward pass of the extractor.

    Raises:
        ValueError: (when called) a file that is not a feature file, features that are not (N >= 1, D), an
            empty tile list, or tiles without an extractor; the message names the file or the bag.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        extractor: torch.nn.Module | None = None,
        loader: Callable[[str], torch.Tensor] | None = None,
        batch_size: int = 64,
    ) -> None:
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
        self.extractor = extractor
        self.loader = loader
        self.batch_size = int(batch_size)

    def _from_file(self, path: Path) -> torch.Tensor:
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"{path}: cannot be read as a feature file ({type(err).__name__}).") from None
        feats = stored.get("features") if isinstance(stored, Mapping) else stored
        if not isinstance(feats, torch.Tensor) or feats.ndim != 2 or feats.shape[0] < 1:
            raise ValueError(f"{path}: expected features (N >= 1, D) (a tensor, or a dict with 'features').")
        return feats.float()

    def _from_tiles(self, tiles: Sequence[str]) -> torch.Tensor:
        if not tiles:
            raise ValueError("a tile bag without tiles.")
        if self.extractor is None:
            raise ValueError(f"a bag of tiles ({tiles[0]}, ...) needs an extractor to embed them.")
        if self.loader is None:
            from monai_disc.data.tilesets import tile_loader

            self.loader = tile_loader()
        tensors = [*self.extractor.parameters(), *self.extractor.buffers()]
        device = tensors[0].device if tensors else torch.device("cpu")
        self.extractor.eval()
        parts = []
        with torch.inference_mode():
            for start in range(0, len(tiles), self.batch_size):
                batch = torch.stack([self.loader(str(t)) for t in tiles[start : start + self.batch_size]])
                parts.append(self.extractor(batch.to(device)).float().cpu())
        return torch.cat(parts)

    def __call__(self, bag: str | os.PathLike | Sequence[str]) -> torch.Tensor:
        """Args: bag: a feature file, or tile paths. Returns: features (N, D), float32, on the CPU."""
        if isinstance(bag, (str, os.PathLike)):
            return self._from_file(Path(bag))
        return self._from_tiles(list(bag))


class LoadBagd(MapTransform):
    """Dictionary version of :class:`LoadBag`.

    Args:
        keys: keys of the bags (a feature file or a list of tile paths each).
        extractor, loader, batch_size: as :class:`LoadBag`.
        allow_missing_keys: don't raise for a missing key.
    """

    backend = LoadBag.backend

    def __init__(
        self,
        keys: KeysCollection,
        extractor: torch.nn.Module | None = None,
        loader: Callable[[str], torch.Tensor] | None = None,
        batch_size: int = 64,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadBag(extractor, loader, batch_size)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])  # type: ignore[arg-type]
        return d


LoadBagD = LoadBagDict = LoadBagd
