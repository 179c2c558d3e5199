"""What a training run may be asked for: one pydantic model, the one home of every
default and bound. The API's request body (`RunRequest`, `RunCreate` in api/), the CLI's
options (tilesight/commands/train.py builds them from these fields) and the worker's
configuration (`TrainingPlan.from_spec`) all derive from `TrainingSpec`.

A field left unset (None) takes the default of its kind of run: a run from scratch, or a
fine-tune (`init_from_version`, or the CLI's `--init-from`) on a small area of a new
place. A fine-tune needs a lower learning rate but as many epochs (a few tiles make only a
few steps an epoch: 6 epochs left a third of Tanzania at 0.27 object F1 where 20 reached
0.43), the encoder at first and the BatchNorm statistics of the base kept, and its best
epoch kept (the base's own weights among the candidates) so a fine-tune never hands back
something worse on the validation tiles than what it started from. The loss is not
weighted for the few building pixels: the "auto" weight raised pixel IoU but painted
between roofs and joined them, and left the other two thirds of a left-out place at
object F1 0.235 where weight 1 reached 0.271 (model_repo/README.md).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints, field_validator, model_validator

ClassName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
ClassWeight = Annotated[float, Field(ge=0, le=1000)]
Monitor = Literal["pixel_iou", "f1", "object_f1", "loss"]
Augmentation = Literal["basic", "full", "scale"]

#: The defaults of the fields left None, for a run from scratch and for a fine-tune.
FROM_SCRATCH: dict[str, Any] = {
    "epochs": 20,
    "lr": 2e-3,
    "patience": 10,
    "freeze_encoder_epochs": 0,
    "freeze_batchnorm": False,
    "positive_weight": 1.0,
    "tune_fraction": 0.2,
}
FINE_TUNE: dict[str, Any] = {
    "epochs": 20,
    "lr": 5e-4,
    "patience": 8,
    "freeze_encoder_epochs": 2,
    "freeze_batchnorm": True,
    "positive_weight": 1.0,
    # a few tiles leave no blocks for a tune split: the best epoch is chosen on validation
    "tune_fraction": 0.0,
}


class TrainingSpec(BaseModel):
    """The hyperparameters of one run; see the module docstring for the None defaults."""

    epochs: int | None = Field(
        None, ge=1, le=1000, description="passes over the training chips (20; fine-tune 20)"
    )
    batch_size: int = Field(8, ge=1, le=512)
    lr: float | None = Field(
        None, gt=0, lt=1, description="peak learning rate (2e-3; fine-tune 5e-4)"
    )
    architecture: str = Field(
        "unet",
        pattern=r"^[a-z][a-z0-9_]{0,31}$",
        description="the network, by its registered name (tilesight.model.unet.NETWORKS)",
    )
    width: int = Field(8, ge=4, le=128, description="U-Net channels at full resolution")
    depth: int = Field(4, ge=1, le=6, description="U-Net levels")
    zoom: int = Field(19, ge=12, le=22, description="the model's native zoom")
    buffer: int = Field(32, ge=0, le=128, description="context pixels each side")
    border: bool = Field(False, description="add a border class between touching buildings")
    init_from_version: int | None = Field(
        None, ge=1, description="fine-tune from this version of the model"
    )
    freeze_encoder_epochs: int | None = Field(
        None, ge=0, le=1000, description="epochs with the encoder frozen (0; fine-tune 2)"
    )
    freeze_batchnorm: bool | None = Field(
        None, description="keep the BatchNorm statistics throughout (off; fine-tune on)"
    )
    positive_weight: float | Literal["auto"] | None = Field(
        None,
        description="BCE weight of building pixels, or 'auto' from the training chips' "
        "share of them (1)",
    )
    patience: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="early stopping: epochs without improvement (10; fine-tune 8)",
    )
    max_steps_per_epoch: int | None = Field(
        None, ge=1, le=100_000, description="cut every epoch short (smoke tests, benchmarks)"
    )
    classes: list[ClassName] = Field(
        default_factory=list,
        min_length=2,
        max_length=32,
        description="multi-class segmentation (land cover...): unique class names, the "
        "background first (pixels no polygon covers, raster value 0); leave out for buildings",
        examples=[["background", "water", "trees", "grass", "impervious"]],
    )
    class_property: str = Field(
        "class", min_length=1, max_length=64, description="the polygon property naming its class"
    )
    class_weights: list[ClassWeight] | None = Field(
        None,
        min_length=2,
        max_length=32,
        description="loss weight per class, in the order of `classes`, against imbalance",
    )
    ignore_value: int | None = Field(
        None, ge=0, le=255, description="the label raster's value for unlabelled pixels"
    )
    monitor: Monitor = Field("pixel_iou", description="score that picks the best epoch")
    augmentation: Augmentation = Field(
        "basic",
        description="augmentation recipe: basic (turns, flips, brightness, contrast), scale "
        "(basic plus ground resolution 0.5-2x), full (scale 0.7-1.4x plus colour, blur, noise)",
    )
    seed: int = Field(0, ge=0, le=2**31 - 1)
    block_zoom: int = Field(
        18, ge=10, le=22, description="split train/validation by tiles of this zoom"
    )
    val_fraction: float = Field(0.25, gt=0, lt=1, description="share of tiles to validate on")
    tune_fraction: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="training blocks held out to pick the best epoch (0.2; fine-tune 0: "
        "validation picks it)",
    )
    empty_ratio: float = Field(
        0.25, ge=0, le=100, description="empty tiles kept per tile with buildings"
    )

    @field_validator("classes", mode="before")
    @classmethod
    def _names_from_text(cls, value: Any) -> Any:
        """A comma-separated string (the CLI's form) is the same list."""
        if isinstance(value, str):
            return [n for n in (p.strip() for p in value.split(",")) if n]
        return value

    @field_validator("class_weights", mode="before")
    @classmethod
    def _weights_from_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",") if p.strip()]
            return parts or None
        return value

    @property
    def fine_tune(self) -> bool:
        return self.init_from_version is not None

    def resolved(self, fine_tune: bool | None = None) -> TrainingSpec:
        """A copy with every None field set to its kind of run's default."""
        fine = self.fine_tune if fine_tune is None else fine_tune
        table = FINE_TUNE if fine else FROM_SCRATCH
        return self.model_copy(update={k: v for k, v in table.items() if getattr(self, k) is None})

    def defaults_taken(self) -> list[str]:
        """The fields this spec leaves to its kind of run, for the run's record."""
        return [k for k in FROM_SCRATCH if getattr(self, k) is None]

    @classmethod
    def from_stored(cls, params: dict[str, Any]) -> TrainingSpec:
        """The spec of a stored run's `params` (which also hold the run's record)."""
        fields = {k: v for k, v in params.items() if k in cls.model_fields}
        if not fields.get("classes"):  # a building run stores no class names
            fields.pop("classes", None)
        return cls.model_validate(fields)


def spec_fields() -> dict[str, Any]:
    """The spec's fields (name -> FieldInfo), for the CLI to build its options from."""
    return dict(TrainingSpec.model_fields)


class RunRequest(TrainingSpec):
    """A training run as a user submits it: a model name, a registered source and its
    labels, and the hyperparameters of `TrainingSpec`."""

    model: str = Field("buildings", pattern=r"^[a-z][a-z0-9_-]{0,63}$")
    source: str = Field(description="id of a registered 8-bit RGB imagery source")
    labels_path: str | None = Field(
        None,
        description="under a data root: footprints or class polygons (GeoJSON, OSM extract), "
        "or with `classes` a single-band raster of class values (.tif, any CRS)",
    )
    labels: dict[str, Any] | None = Field(None, description="or the GeoJSON inline")

    @field_validator("labels_path")
    @classmethod
    def _a_path_the_os_can_take(cls, value: str | None) -> str | None:
        """What no file system accepts is refused here, by name, not as an OSError later."""
        if value is None:
            return value
        if "\x00" in value:
            raise ValueError("must not hold a NUL byte")
        if len(value.encode("utf-8", "surrogatepass")) > 4096:
            raise ValueError("must be at most 4096 bytes")
        if any(len(part.encode("utf-8", "surrogatepass")) > 255 for part in value.split("/")):
            raise ValueError("each folder or file name in it must be at most 255 bytes")
        return value

    @model_validator(mode="after")
    def _one_label_source(self) -> RunRequest:
        if (self.labels is None) == (self.labels_path is None):
            raise ValueError("give the footprints either inline as `labels` or as `labels_path`")
        return self

    def spec(self) -> TrainingSpec:
        """The hyperparameters alone, their unset fields resolved: what a run stores."""
        fields = self.model_dump(include=set(TrainingSpec.model_fields), exclude_unset=True)
        return TrainingSpec.model_validate(fields).resolved()
