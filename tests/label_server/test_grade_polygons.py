"""Label maps -> wsi_v2 polygons: one outline per graded region, holes filled, slide coordinates."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("monailabel", reason="the [monailabel] extra is not installed")

from monai_disc.monailabel.carcinonet import GRADE_COLORS, GRADE_LABELS, GradePolygonsd  # noqa: E402


def _elements(labels: np.ndarray, **data) -> list[dict]:
    out = GradePolygonsd("pred", labels=GRADE_LABELS, colors=GRADE_COLORS, min_poly_area=20)({"pred": labels, **data})
    return out.get("result", {}).get("annotation", {}).get("elements", [])


def test_a_ring_with_an_island_gives_its_outline_and_the_island_not_the_hole():
    labels = np.zeros((64, 80), np.uint8)
    labels[8:56, 10:70] = 1  # GG3 ring ...
    labels[20:44, 25:55] = 0  # ... around an NC hole ...
    labels[28:36, 35:45] = 2  # ... holding a GG4 island
    elements = _elements(labels, location=(1000, 2000), size=(80, 64))
    assert sorted(e["label"] for e in elements) == ["GG3", "GG4"]
    for element in elements:
        (polygon,) = element["contours"]
        pts = np.asarray(polygon) - (1000, 2000)
        rows, cols = np.nonzero(labels == GRADE_LABELS[element["label"]])
        # the outline hugs the region: the same bounding box within a pixel, in (x, y) order
        assert abs(pts[:, 0].min() - cols.min()) <= 1 and abs(pts[:, 0].max() - cols.max()) <= 1
        assert abs(pts[:, 1].min() - rows.min()) <= 1 and abs(pts[:, 1].max() - rows.max()) <= 1


def test_small_regions_and_nc_give_no_polygon():
    labels = np.zeros((32, 32), np.uint8)
    labels[3:6, 3:6] = 3  # 9 px, below min_poly_area 20
    assert _elements(labels) == []
    labels[10:30, 10:30] = 3
    assert [e["label"] for e in _elements(labels)] == ["GG5"]
    assert _elements(labels, min_poly_area=500) == []  # the request's min_poly_area wins: about 20 x 20 px
