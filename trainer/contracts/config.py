"""Typed configuration of a SimCLR pretraining job.

One definition serves the REST API (which validates a submitted job) and the workers (which run it),
so this module imports pydantic only: never torch. Every default reproduces the paper's ImageNet
recipe (Chen et al. 2020; ../shared/reference/simclr-recipe.md): ResNet-50 at 224 px, global batch
4096, LARS with lr 0.075 x sqrt(B) = 0.3 x B/256 = 4.8, weight decay 1e-6, momentum 0.9, 10 warm-up
epochs then cosine, temperature 0.1, 100 epochs, colour strength 1.0 with blur. ``configs/`` holds the paper's CIFAR-10
variant (App. B.9) and the small presets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DatasetName = Literal[
    "imagenet", "imagefolder", "packed", "cifar10", "cifar100", "stl10", "digits", "synthetic"
]

# Side of the augmented views when the config leaves it unset.
DEFAULT_IMAGE_SIZE: dict[str, int] = {
    "imagenet": 224,
    "imagefolder": 224,
    "packed": 224,
    "cifar10": 32,
    "cifar100": 32,
    "stl10": 96,
    "digits": 16,
    "synthetic": 32,
}


# Bounds every config shares: generous, but finite (a security audit: an absurd number must be a
# 422 naming the field, not a run that fails, or exhausts a node, once it starts).
MAX_SEED = 2**32 - 1  # numpy seeds must be below 2**32
MAX_STEPS = 10**9
MAX_EPOCHS = 100_000
MAX_BATCH = 1 << 20  # global batch (the paper goes to 32768)
MAX_IMAGE_SIZE = 1024
MAX_DIM = 65_536  # a hidden, output or latent dimension
MAX_WIDTH = 4096  # a network's channels
MAX_LR = 100.0
MAX_CHECKPOINTS = 1000
MAX_MONITOR_BYTES = 2 << 30  # the kNN monitor's uint8 views, kept on rank 0

Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
EverySteps = Annotated[int, Field(ge=1, le=MAX_STEPS)]
KeepCheckpoints = Annotated[int, Field(ge=1, le=MAX_CHECKPOINTS)]
LearningRate = Annotated[float, Field(gt=0, le=MAX_LR)]
Precision = Annotated[
    Literal["auto", "fp32", "bf16"],
    Field(
        description="auto: bf16 autocast where the worker's device computes bf16 fast (a CUDA GPU "
        "with bf16; a CPU with AMX or AVX512-BF16 whose bf16 kernels a probe on the worker finds at "
        "least 1.25x as fast as fp32; a run's workers agree), fp32 elsewhere; weights, losses, "
        "optimisers and checkpoints stay fp32 (trainer/precision.py)"
    ),
]


class StrictModel(BaseModel):
    """Unknown fields and non-finite numbers (NaN, Infinity) are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DatasetConfig(StrictModel):
    """Where the images come from. ``root`` is required for every set but digits and synthetic."""

    name: DatasetName = "imagenet"
    root: str | None = None
    image_size: int | None = Field(
        default=None, ge=4, le=MAX_IMAGE_SIZE, description="side of the views; per-dataset default"
    )
    max_side: int = Field(
        default=384,
        ge=8,
        le=8192,
        description="image-folder images are decoded with their longer side at most this",
    )
    on_error: Literal["raise", "skip"] = Field(
        default="skip", description="an unreadable image: fail, or skip it and count it"
    )
    loader_workers: int = Field(
        default=4, ge=0, le=256, description="decoding processes for image folders"
    )
    class_list: str | None = Field(
        default=None,
        description="imagenet/imagefolder: a file of class folder names, one per line (ImageNet-100 "
        "or any subset); labels follow the file's order",
    )
    synthetic_images: int = Field(default=2048, ge=1, le=10**7)
    synthetic_classes: int = Field(default=10, ge=2, le=100_000)
    loader: Literal["torch", "ray_data", "synthetic"] = Field(
        default="torch",
        description="torch: a DataLoader on the worker (one machine, the tests); ray_data: stream "
        "packed shards (name 'packed', root = a `simclr data pack` output) decoded by Ray Data "
        "tasks on any node; synthetic: random images made on the device, no reading or decoding "
        "(the trainer's own ceiling)",
    )
    decode_resources: dict[str, Annotated[float, Field(ge=0, le=1e6)]] = Field(
        default_factory=dict,
        max_length=64,
        description="ray_data: custom Ray resources each decode task needs, e.g. {'decode': 1} to "
        "keep decoding on nodes started with --resources '{\"decode\": N}' (docs/input_pipeline.md)",
    )

    log_indices: bool = Field(
        default=False,
        description="ray_data: each rank appends the image indices of every batch it trains on to "
        "<run dir>/indices/rank-<r>.jsonl (an audit of the data order across restarts)",
    )

    @model_validator(mode="after")
    def _root_when_needed(self) -> DatasetConfig:
        if self.name not in ("digits", "synthetic") and not self.root:
            raise ValueError(f"dataset {self.name!r} needs a 'root' directory")
        if (self.name == "packed") != (self.loader == "ray_data"):
            raise ValueError(
                "packed shards are read by the ray_data loader, and the ray_data loader reads "
                f"packed shards: got name {self.name!r} with loader {self.loader!r}"
            )
        if self.class_list and self.name not in ("imagenet", "imagefolder"):
            raise ValueError(f"class_list applies to imagenet and imagefolder, not {self.name!r}")
        return self

    @property
    def view_size(self) -> int:
        return self.image_size or DEFAULT_IMAGE_SIZE[self.name]

    @property
    def eval_crop_fraction(self) -> float:
        """The test view's crop: ImageNet's "resize 256, centre-crop 224" for photo folders, the
        whole image for the small sets."""
        return 0.875 if self.name in ("imagenet", "imagefolder", "packed") else 1.0


class BackboneConfig(StrictModel):
    name: Literal["resnet18", "resnet34", "resnet50", "small_cnn"] = "resnet50"
    cifar_stem: bool = False
    width: int = Field(default=64, ge=8, le=MAX_WIDTH, description="base width of the small CNN")


class HeadConfig(StrictModel):
    hidden_dim: int = Field(default=2048, ge=1, le=MAX_DIM)
    out_dim: int = Field(default=128, ge=1, le=MAX_DIM)
    num_layers: int = Field(default=2, ge=1, le=8, description="2 in SimCLR v1, 3 in v2")


class OptimizerConfig(StrictModel):
    name: Literal["lars", "sgd"] = "lars"
    lr_scaling: Literal["linear", "sqrt"] = Field(
        default="sqrt",
        description="peak lr = base_lr x sqrt(B) or base_lr x B/256. Both give the paper's 4.8 at "
        "B = 4096; below it, square-root scaling is the paper's advice (App. B.1) and trained the "
        "small CNN 3.1 points better on CIFAR-10 at batch 256 (docs/benchmarks.md)",
    )
    base_lr: float | None = Field(
        default=None,
        gt=0,
        le=MAX_LR,
        description="default: the paper's 0.075 for sqrt, 0.3 for linear",
    )
    weight_decay: float = Field(default=1e-6, ge=0, le=1)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    eta: float = Field(default=1e-3, gt=0, le=1, description="LARS trust coefficient")
    warmup_epochs: float = Field(default=10, ge=0, le=MAX_EPOCHS)

    @property
    def resolved_base_lr(self) -> float:
        if self.base_lr is not None:
            return self.base_lr
        return 0.075 if self.lr_scaling == "sqrt" else 0.3


class AugmentConfig(StrictModel):
    strength: float = Field(default=1.0, ge=0, le=10, description="colour-jitter strength s")
    blur: bool = True
    compile: bool = Field(default=False, description="fuse the colour kernels with torch.compile")


class KnnSettings(StrictModel):
    """What a user chooses about a kNN evaluation: the weighted k-nearest-neighbour classifier of
    Wu et al. (2018), as solo-learn and lightly report it. Each of the ``k`` training features
    most cosine-similar to a test feature votes exp(similarity / ``temperature``) for its class."""

    k: int = Field(default=200, ge=1, le=10_000, description="neighbours that vote")
    temperature: float = Field(
        default=0.1, gt=0, le=100, description="votes weigh exp(cosine similarity / temperature)"
    )


class MonitorConfig(KnnSettings):
    """The online kNN monitor of a SimCLR run (``trainer.knn.KnnMonitor``): every
    ``every_steps`` steps rank 0 scores the current encoder with the weighted kNN classifier,
    ``train_images`` labelled training images as the neighbours and ``test_images`` held-out ones
    as the queries (both chosen once by the run's seed; ``k`` and ``temperature`` as in a kNN
    evaluation; their uint8 views at most ``MAX_MONITOR_BYTES``), and reports the top-1 as ``knn_top1``."""

    every_steps: EverySteps | None = Field(
        default=None, description="off by default (the paper's ImageNet recipe); the presets set it"
    )
    train_images: int = Field(default=2000, ge=1, le=100_000, description="neighbours' images")
    test_images: int = Field(default=1000, ge=1, le=100_000, description="held-out queries")
    dataset: DatasetConfig | None = Field(
        default=None,
        description="the labelled images (train and test splits); default: the job's data set. "
        "Required for packed shards, which the monitor cannot read",
    )

    def due(self, step: int) -> bool:
        """Whether the monitor scores the encoder after ``step`` steps (every rank asks)."""
        return bool(self.every_steps) and step % self.every_steps == 0


class SimCLRConfig(StrictModel):
    dataset: DatasetConfig = Field(description="required: no data set can be assumed")
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    head: HeadConfig = Field(default_factory=HeadConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    batch_size: int = Field(
        default=4096, ge=2, le=MAX_BATCH, description="GLOBAL batch of images (2x views)"
    )
    epochs: int = Field(default=100, ge=1, le=MAX_EPOCHS)
    train_steps: int | None = Field(
        default=None,
        ge=1,
        le=MAX_STEPS,
        description="the run's length in steps, overriding epochs (the official code's "
        "--train_steps): the warm-up + cosine schedule ends here, and the data is read for as "
        "many epochs as these steps need",
    )
    max_steps: int | None = Field(
        default=None,
        ge=1,
        le=MAX_STEPS,
        description="stop after this many steps (smoke runs); the schedule still spans all "
        "epochs (or train_steps)",
    )
    temperature: float = Field(default=0.1, gt=0, le=100)
    chunk_size: int | None = Field(
        default=None,
        ge=1,
        le=1 << 20,
        description="gradient cache: embed at most this many views at a time; exact NT-Xent over the whole batch",
    )
    precision: Precision = "auto"
    channels_last: bool | None = Field(
        default=None,
        description="channels-last weights and views; default on CUDA only. On this project's "
        "x86 CPUs it made the small CNN's step 1.36x faster (docs/benchmarks.md)",
    )
    compile_model: bool = False
    seed: Seed = 0
    log_every_steps: EverySteps = 10
    checkpoint_every_steps: EverySteps | None = Field(
        default=None, description="besides every epoch end"
    )
    keep_checkpoints: KeepCheckpoints = 2
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)

    def schedule_steps(self, steps_per_epoch: int) -> int:
        """The steps the learning-rate schedule spans: ``train_steps``, else ``epochs`` of
        ``steps_per_epoch`` (the official code's ``get_train_steps``, without its extra step)."""
        return self.train_steps or self.epochs * steps_per_epoch

    def data_epochs(self, steps_per_epoch: int) -> int:
        """The epochs of data the schedule reads, the last one maybe in part."""
        return -(-self.schedule_steps(steps_per_epoch) // steps_per_epoch)

    @model_validator(mode="after")
    def _monitor_can_read(self) -> SimCLRConfig:
        monitor = self.monitor
        if not monitor.every_steps:
            return self
        if not monitor.dataset and self.dataset.name == "packed":
            raise ValueError(
                "monitor: packed shards have no held-out split the monitor can read; give "
                "monitor.dataset (the image folder they were packed from)"
            )
        side = (monitor.dataset or self.dataset).view_size
        held = (monitor.train_images + monitor.test_images) * 3 * side * side
        if held > MAX_MONITOR_BYTES:
            raise ValueError(
                f"monitor: {monitor.train_images + monitor.test_images} views of {side} px are "
                f"{held / 2**30:.1f} GiB on rank 0; at most {MAX_MONITOR_BYTES >> 30} GiB: use "
                "fewer train_images or test_images"
            )
        return self


CropFraction = Annotated[float, Field(gt=0, le=1)]


class LinearProbeSettings(StrictModel):
    """What a user chooses about a linear evaluation (paper App. B.5): the protocol's defaults."""

    mode: Literal["fast", "augmented"] | None = Field(
        default=None,
        description="fast: a classifier on features extracted once from un-augmented images (cached); "
        "augmented: the paper's protocol, random-resized-crop + flip through the frozen encoder every "
        "epoch. Default: augmented for imagenet, fast for the rest",
    )
    epochs: int = Field(default=90, ge=1, le=MAX_EPOCHS)
    batch_size: int | None = Field(
        default=None,
        ge=1,
        le=MAX_BATCH,
        description="global batch; lr = base_lr x B / 256. Default: the paper's 4096 on imagenet, "
        "256 on the smaller sets (an epoch of a few thousand images would be one step)",
    )
    base_lr: LearningRate = 0.1
    crop_scale: tuple[CropFraction, CropFraction] = Field(
        default=(0.08, 1.0),
        description="augmented mode: area range of the random-resized crop (the paper's 0.08-1)",
    )
    flip: bool = Field(default=True, description="augmented mode: random horizontal flip")
    seed: Seed = 0

    @model_validator(mode="after")
    def _crop_scale_range(self) -> LinearProbeSettings:
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        return self


def evaluation_batch_size(batch_size: int | None, dataset: DatasetConfig) -> int:
    """An evaluation's global batch: the one chosen, else the paper's 4096 on ImageNet and 256
    on the smaller sets (an epoch of a few thousand images would be one step)."""
    return batch_size or (4096 if dataset.name == "imagenet" else 256)


class CheckpointTarget(StrictModel):
    """What every evaluation scores: a pretraining job's checkpoint (resolved by the service), on
    a data set."""

    source_job_id: str
    checkpoint: str = Field(description="the checkpoint's name (its id in the service)")
    checkpoint_path: str = Field(
        description="the checkpoint directory (or state.pt) on the storage"
    )
    dataset: DatasetConfig


class LinearProbeConfig(LinearProbeSettings, CheckpointTarget):
    """A linear evaluation job: the settings, the data, and the checkpoint the service resolved."""

    @property
    def resolved_mode(self) -> str:
        return self.mode or ("augmented" if self.dataset.name == "imagenet" else "fast")

    @property
    def resolved_batch_size(self) -> int:
        return evaluation_batch_size(self.batch_size, self.dataset)


class KnnConfig(KnnSettings, CheckpointTarget):
    """A kNN evaluation job: the settings, the data, and the checkpoint the service resolved."""


class FinetuneSettings(StrictModel):
    """What a user chooses about a fine-tuning evaluation: the paper's semi-supervised protocol
    (Chen et al. 2020, App. B.6): the whole encoder and a new linear layer trained on a
    class-balanced fraction of the labels with Nesterov momentum 0.9, lr 0.05 x B/256 decayed by a
    cosine without warm-up, no weight decay, random-resized crop and flip only; 60 epochs on 1 %
    of the labels, 30 on 10 %."""

    label_fraction: float = Field(
        default=0.1, gt=0, le=1,
        description="the fraction of each class's training images that keep their label (seeded)",
    )  # fmt: skip
    label_subset: str | None = Field(
        default=None,
        max_length=4096,
        json_schema_extra={"data_path": True},
        description="imagenet/imagefolder: a file under the data roots listing the labelled images, "
        "one per line, by file name or path below the split's folder (as the official 1 % and 10 % "
        "ImageNet lists are); replaces label_fraction",
    )
    epochs: int | None = Field(
        default=None, ge=1, le=MAX_EPOCHS,
        description="default: the paper's 60 for its 1 % of the labels, 30 for its 10 % (60 below "
        "5 %, 30 above)",
    )  # fmt: skip
    batch_size: int | None = Field(
        default=None, ge=1, le=MAX_BATCH,
        description="global batch; default: the paper's 4096 on imagenet, 256 on the smaller sets "
        "(at most the labelled images)",
    )  # fmt: skip
    base_lr: LearningRate = Field(default=0.05, description="lr = base_lr x B / 256")
    seed: Seed = 0
    precision: Precision = "auto"


class FinetuneConfig(FinetuneSettings, CheckpointTarget):
    """A fine-tuning evaluation job: the settings, the data, and the checkpoint the service
    resolved. It keeps its newest ``keep_checkpoints`` epoch checkpoints (to resume from)."""

    keep_checkpoints: KeepCheckpoints = 2

    @model_validator(mode="after")
    def _subset_of_a_folder(self) -> FinetuneConfig:
        if self.label_subset and self.dataset.name not in ("imagenet", "imagefolder"):
            raise ValueError(
                f"label_subset lists image files: it applies to imagenet and imagefolder, not "
                f"{self.dataset.name!r} (use label_fraction)"
            )
        return self

    def resolved_epochs(self, labelled_fraction: float) -> int:
        """``epochs``, else the paper's: 60 for its 1 % of the labels, 30 for its 10 % (below 5 %
        and above; a per-class rounding of 1 % may land a little over 1 %)."""
        return self.epochs or (60 if labelled_fraction < 0.05 else 30)

    @property
    def resolved_batch_size(self) -> int:
        return evaluation_batch_size(self.batch_size, self.dataset)


def torchvision_recipe(config: SimCLRConfig) -> dict[str, Any] | None:
    """How to build the torchvision model an exported encoder (``trainer.export``) loads into,
    as lines of Python over ``state`` (the exported tensors); None for a backbone torchvision
    does not have."""
    backbone = config.backbone
    if backbone.name == "small_cnn":
        return None
    steps = [f"model = torchvision.models.{backbone.name}()"]
    if backbone.cifar_stem:
        steps += [
            "model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)",
            "model.maxpool = torch.nn.Identity()",
        ]
    steps += ["model.load_state_dict(state, strict=False)  # only fc.* is missing",
              "model.fc = torch.nn.Identity()  # the pooled features"]  # fmt: skip
    return {"constructor": f"torchvision.models.{backbone.name}", "cifar_stem": backbone.cifar_stem,
            "build": steps}  # fmt: skip


def read_mapping(path: str | Path) -> dict:
    """The mapping a YAML or JSON file holds; errors name the file."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {path}") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of config fields, not {type(data).__name__}")
    return data


def load_config(path: str | Path) -> SimCLRConfig:
    """Read a YAML or JSON file into a ``SimCLRConfig``; errors name the file and the field."""
    return SimCLRConfig.model_validate(read_mapping(path))
