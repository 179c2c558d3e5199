"""Object-level precision, recall and F1 of a job's buildings against footprint labels.

A predicted building counts as found when it overlaps one label with IoU >= 0.5, each
label matched at most once (greedy, best IoU first, as in the SpaceNet metric). Labels
are cut to the job's AOI exactly like the predictions were, so a footprint that only
pokes into the area is compared with the part of it that the job could see.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from geoalchemy2.shape import to_shape
from pyproj import Transformer
from shapely.geometry import MultiPolygon, Polygon
from sqlalchemy import select
from sqlalchemy.orm import Session

from tilesight import tables
from tilesight.errors import NotFound
from tilesight.model.metrics import greedy_pairs
from tilesight.model.sources import load_footprints
from tilesight.settings import Settings

IOU_THRESHOLD = 0.5
MIN_LABEL_FRACTION = 0.25  # labels with less of themselves in the AOI are not counted


def labels_path(source: tables.Source) -> Path | None:
    """Footprint labels registered with a source, or lying beside its original imagery."""
    named = (source.info or {}).get("labels")
    candidates = [Path(named)] if named else []
    original = Path(source.original_uri) if source.original_uri else None
    if original is not None and "://" not in source.original_uri:
        folder = original if original.is_dir() else original.parent
        candidates += [folder / "labels.geojson", *sorted(folder.glob("*labels*.geojson"))]
    return next((p for p in candidates if p.is_file()), None)


def footprints_4326(path: Path) -> list[Polygon]:
    """Footprints in EPSG:4326, read exactly as training reads them (GeoJSON in any CRS
    or an OSM extract, `building=no` dropped), so a job is scored against what a model
    would have been trained on."""
    to_4326 = Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True)

    def transform(c: np.ndarray) -> np.ndarray:
        return np.column_stack(to_4326.transform(c[:, 0], c[:, 1]))

    return [shapely.transform(g, transform) for g in load_footprints(path)]


def polygon_pairs(
    predictions: list[Polygon], labels: list[Polygon], iou_threshold: float = IOU_THRESHOLD
) -> dict[int, int]:
    """Prediction index -> label index, matched one to one at IoU >= iou_threshold."""
    tree = shapely.STRtree(labels)
    candidates: list[tuple[float, int, int]] = []
    for i, p in enumerate(predictions):
        for j in tree.query(p, predicate="intersects"):
            label = labels[int(j)]
            union = p.union(label).area
            iou = p.intersection(label).area / union if union else 0.0
            if iou >= iou_threshold:
                candidates.append((iou, i, int(j)))
    return greedy_pairs(candidates)


def match(
    predictions: list[Polygon], labels: list[Polygon], iou_threshold: float = IOU_THRESHOLD
) -> dict[str, Any]:
    tp = len(polygon_pairs(predictions, labels, iou_threshold))
    precision = tp / len(predictions) if predictions else 0.0
    recall = tp / len(labels) if labels else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "iou_threshold": iou_threshold,
        "labels": len(labels),
        "predictions": len(predictions),
        "true_positives": tp,
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
    }


def clip_labels(labels: list[Polygon], aoi: MultiPolygon) -> list[Polygon]:
    shapely.prepare(aoi)
    out: list[Polygon] = []
    for label in labels:
        if not aoi.intersects(label):
            continue
        inside = label.intersection(aoi)
        if inside.area < MIN_LABEL_FRACTION * label.area:
            continue
        out += [g for g in getattr(inside, "geoms", [inside]) if isinstance(g, Polygon)]
    return out


def evaluate_job(session: Session, settings: Settings, job_id: uuid.UUID) -> dict[str, Any]:
    job = session.get(tables.Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id} does not exist")
    source = session.get(tables.Source, job.source_id)
    path = labels_path(source) if source is not None else None
    if path is None:
        raise NotFound(
            f"no footprint labels are known for source {job.source_id!r}; put a "
            "labels.geojson beside its imagery to evaluate jobs over it"
        )
    aoi = to_shape(job.aoi)
    labels = clip_labels(footprints_4326(path), aoi)
    if not labels:
        raise NotFound(f"the labels in {path.name} do not cover this job's area")
    geoms = session.scalars(
        select(tables.Building.geom).where(tables.Building.job_id == job_id)
    ).all()
    predictions = [to_shape(g) for g in geoms]
    return {**match(predictions, labels), "labels_source": path.name}
