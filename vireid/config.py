"""Typed configuration: one frozen dataclass per ``params.yaml`` section.

``params.yaml`` is read by ``pipelines/`` (never by the library) and handed to
:func:`config_from_dict`, which rejects unknown keys and out-of-range values with a
:class:`ConfigError` that names the offending key (``model.memory_size``).
Each section class validates its own values in ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

#: RegDB's split trials (``idx/*_<trial>.txt``): one model per trial. Defined here, where
#: ``data.regdb_trial`` is checked, so that the configuration imports nothing from the layers it configures.
REGDB_TRIALS: tuple[int, ...] = tuple(range(1, 11))


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range; the message names the key."""


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


# ---------------------------------------------------------------------------------------
# data


@dataclass(frozen=True)
class SyntheticConfig:
    """The generated dataset of the embedded default (both SYSU-MM01 and RegDB layouts)."""

    seed: int = 0  # same seed, same bytes
    sysu_identities: int = 48  # identities in the generated SYSU-MM01 tree
    sysu_images_per_camera: int = 12  # images per (identity, camera) folder; >= 10 for multi-shot
    sysu_val_fraction: float = 0.15  # share of SYSU identities written to exp/val_id.txt (>= 1 identity)
    sysu_test_fraction: float = 0.25  # share of SYSU identities in exp/test_id.txt (at least 8)
    sysu_camera_presence: float = 1.0  # probability that an identity appears in a camera (>= 1 visible and 1 infrared kept)
    regdb_identities: int = 40  # identities in the generated RegDB tree (half train, half test)
    regdb_images_per_modality: int = 10  # RegDB has 10 visible + 10 thermal per identity
    image_height: int = 128  # height of a generated image in pixels
    image_width: int = 64  # width of a generated image in pixels

    def __post_init__(self) -> None:
        _check(self.sysu_identities >= 12, "data.synth.sysu_identities",
               "must be >= 12 (8 test identities + val + at least 2 train)")
        _check(0.0 < self.sysu_val_fraction < 1.0, "data.synth.sysu_val_fraction", "must be in (0, 1)")
        _check(0.0 < self.sysu_test_fraction < 1.0, "data.synth.sysu_test_fraction", "must be in (0, 1)")
        n_test = max(8, round(self.sysu_test_fraction * self.sysu_identities))
        n_val = round(self.sysu_val_fraction * self.sysu_identities)
        _check(n_val >= 1, "data.synth.sysu_val_fraction",
               f"gives {n_val} identities for exp/val_id.txt; the SYSU-MM01 layout needs at least 1 "
               "(its reader refuses an empty split file)")
        _check(self.sysu_identities - n_test - n_val >= 2, "data.synth.sysu_test_fraction",
               f"leaves {self.sysu_identities - n_test - n_val} train identities (need >= 2)")
        _check(self.sysu_images_per_camera >= 1, "data.synth.sysu_images_per_camera", "must be >= 1")
        _check(0.0 < self.sysu_camera_presence <= 1.0, "data.synth.sysu_camera_presence",
               f"must be in (0, 1], got {self.sysu_camera_presence}")
        _check(self.regdb_identities >= 4 and self.regdb_identities % 2 == 0,
               "data.synth.regdb_identities", "must be an even number >= 4")
        _check(self.regdb_images_per_modality >= 1, "data.synth.regdb_images_per_modality", "must be >= 1")
        _check(self.image_height >= 16 and self.image_width >= 8,
               "data.synth.image_height", "images must be at least 16x8")


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, where it lives, and how it is turned into shards."""

    dataset: Literal["sysu", "regdb"] = "sysu"  # protocol family of the raw tree
    root: str = "data/raw/SYSU-MM01"  # raw dataset tree, in its original layout
    synthetic: bool = True  # generate the tree at ``root`` (embedded default) instead of reading a real one
    synth: SyntheticConfig = field(default_factory=SyntheticConfig)  # generator settings
    sysu_train_lists: tuple[str, ...] = ("train", "val")  # exp/<name>_id.txt files whose ids are trained on
    regdb_trial: int = 1  # RegDB split trial 1..10 (one model per trial)
    holdout_identities: int = 4  # training identities held out for model selection (0: none)
    holdout_seed: int = 0  # seed of the choice of held-out identities
    image_height: int = 288  # stored and training image height; divisible by 16
    image_width: int = 144  # stored and training image width; divisible by 8
    shard_rows: int = 1024  # images per Arrow shard file
    jpeg_quality: int = 95  # quality of the re-encoded, resized images in the shards (jpeg encoding)
    shard_encoding: Literal["jpeg", "raw"] = "jpeg"  # jpeg: decoded per item; raw: uint8 [3,H,W] pixels, copied out, no decode (~9x the disk)

    def __post_init__(self) -> None:
        _check(self.regdb_trial in REGDB_TRIALS, "data.regdb_trial", "must be in 1..10")
        _check(self.holdout_identities >= 0, "data.holdout_identities", "must be >= 0")
        _check(self.image_height > 0 and self.image_height % 16 == 0, "data.image_height",
               f"{self.image_height} is not divisible by the backbone stride 16")
        _check(self.image_width > 0 and self.image_width % 8 == 0, "data.image_width",
               f"{self.image_width} is not divisible by 8 (backbone stride 16 with last stride 1 "
               "needs height % 16 == 0 and width % 8 == 0)")
        _check(self.shard_rows >= 1, "data.shard_rows", "must be >= 1")
        _check(1 <= self.jpeg_quality <= 100, "data.jpeg_quality", "must be in 1..100")
        _check(self.shard_encoding in ("jpeg", "raw"), "data.shard_encoding",
               f"must be one of ['jpeg', 'raw'], got {self.shard_encoding!r}")
        _check(len(self.sysu_train_lists) > 0, "data.sysu_train_lists", "must name at least one list")
        for name in self.sysu_train_lists:
            _check(name in ("train", "val"), "data.sysu_train_lists", f"unknown list {name!r}")


# ---------------------------------------------------------------------------------------
# model and loss


@dataclass(frozen=True)
class ModelConfig:
    """The two-stream network and the method's switchable parts (docs/method.md sections 0-2)."""

    arch: Literal["resnet50", "resnet18", "tiny"] = "resnet50"  # tiny: 1 block per stage, for tests
    pretrained: bool = True  # start the backbone from ImageNet weights
    weights_path: str = ""  # local ImageNet weights file; empty: torchvision's download
    last_stride: int = 1  # stride of layer4 (AGW: 1)
    gem_p: float = 3.0  # generalised-mean pooling exponent
    fusion: bool = True  # dual classifiers + attention fusion (section 1)
    memory: bool = True  # multi-view memory (section 2)
    memory_size: int = 8  # S: slots per identity in the memory (per identity and modality with memory_views: other)
    memory_views: Literal["both", "other"] = "both"  # teacher of a sample: its identity's views of both modalities | of the OTHER modality only (reading a, docs/method.md)
    dual_probe: bool = False  # W^v, W^r trained on detached g: probes that do not move the shared layers (reading c)
    fusion_layer: int = 0  # 0: h = attention fusion of the pair's g (section 1) | 2 or 3: mid-level fusion (reading d): the pair's layer-2/3 maps averaged, through the remaining shared layers, GeM and BNNeck
    cross_consistency: bool = False  # reading f (MPANet): EMA copies of W^v, W^r; the cc term pulls W^m g toward the other modality's EMA classifier
    cc_update: float = 0.2  # EMA rate of reading f: W_ema <- (1 - r) W_ema + r W after every step (MPANet's update_rate)
    non_local: bool = True  # AGW's non-local attention blocks in layer2/layer3 (docs/method.md)

    def __post_init__(self) -> None:
        _check(self.last_stride in (1, 2), "model.last_stride", "must be 1 or 2")
        _check(self.gem_p >= 1.0, "model.gem_p", "must be >= 1")
        _check(self.memory_size >= 1, "model.memory_size", "must be >= 1")
        _check(self.fusion_layer in (0, 2, 3), "model.fusion_layer", f"must be 0, 2 or 3, got {self.fusion_layer}")
        _check(self.fusion or self.fusion_layer == 0, "model.fusion_layer",
               "mid-level fusion makes the fused feature h: it needs model.fusion: true")
        _check(self.fusion or not self.cross_consistency, "model.cross_consistency",
               "needs the modality classifiers W^v, W^r: turn on model.fusion")
        _check(0.0 < self.cc_update <= 1.0, "model.cc_update", f"must be in (0, 1], got {self.cc_update}")


@dataclass(frozen=True)
class LossWeights:
    """A weight per named loss term; the total loss is the weighted sum of the terms present."""

    id: float = 1.0  # shared identity classifier on g
    tri: float = 1.0  # triplet on f
    dual: float = 1.0  # modality classifiers W^v, W^r
    fuse: float = 1.0  # fused pair features under the shared classifier
    kd: float = 1.0  # self-distillation
    infer: float = 1.0  # feature-level inference toward the other modality (loss.infer; reading b)
    cc: float = 2.5  # cross-classifier consistency (model.cross_consistency; reading f; MPANet's weight_KL)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            _check(math.isfinite(v) and v >= 0.0, f"loss.weights.{f.name}", f"must be finite and >= 0, got {v}")


@dataclass(frozen=True)
class LossConfig:
    """Loss terms (docs/method.md sections 0, 1, 3); each term is returned by name."""

    label_smoothing: float = 0.0  # identity cross-entropy label smoothing
    triplet: Literal["hard", "wrt", "none"] = "wrt"  # wrt: AGW's weighted-regularisation triplet; hard: batch-hard with margin
    triplet_pairs: Literal["all", "cross_modality"] = "all"  # all: mined over the whole batch (AGW); cross_modality: partners from the other modality only
    margin: float = 0.3  # margin of the hard-mining triplet
    distill: bool = True  # self-distillation from fusion and memory teachers (section 3)
    dynamic: bool = True  # parameter-free dynamic weight; False: static weight 1
    temperature: float = 4.0  # T of the distillation softmax
    infer: Literal["none", "memory", "fused"] = "none"  # reading b: pull normalised g toward the detached memory teacher's feature | the fused pair feature h
    distill_start: float = 0.0  # reading e: kd and infer join after this fraction of train.epochs (0: from the first step)
    weights: LossWeights = field(default_factory=LossWeights)  # weight of each term in the total

    def __post_init__(self) -> None:
        _check(0.0 <= self.label_smoothing < 1.0, "loss.label_smoothing", "must be in [0, 1)")
        _check(self.margin >= 0.0, "loss.margin", "must be >= 0")
        _check(self.temperature > 0.0, "loss.temperature", f"must be > 0, got {self.temperature}")
        _check(0.0 <= self.distill_start < 1.0, "loss.distill_start", f"must be in [0, 1), got {self.distill_start}")


# ---------------------------------------------------------------------------------------
# training, tuning, evaluation, tracking


@dataclass(frozen=True)
class TrainConfig:
    """AGW's optimiser and schedule, the batch shape and the Ray Train layout."""

    seed: int = 0  # seeds sampler, augmentation and initialisation
    epochs: int = 80  # training epochs
    iters_per_epoch: int = 0  # sampler batches per epoch and worker; 0 (default, real data, the AGW recipes): a full pass over the visible images; > 0 truncates (the CPU demo: 20; on real data the train stage warns)
    identities_per_batch: int = 8  # P
    instances_per_modality: int = 4  # K visible + K infrared per identity
    lr: float = 0.1  # learning rate of new layers (classifiers, BNNeck)
    backbone_lr: float = 0.01  # learning rate of the pretrained backbone
    lr_scaling: Literal["none", "linear"] = "none"  # none: lr and backbone_lr as given | linear: both x the data-parallel world size (train.num_workers), warm-up ramps to the scaled lr
    momentum: float = 0.9  # SGD nesterov momentum
    weight_decay: float = 5e-4  # SGD weight decay
    warmup_epochs: int = 10  # linear warm-up
    milestones: tuple[int, ...] = (20, 50)  # x0.1 at each
    num_workers: int = 1  # Ray Train data-parallel workers
    use_gpu: bool = False  # one GPU per worker
    cpus_per_worker: int = 1  # CPUs reserved per Ray Train worker
    loader_workers: int = 0  # DataLoader worker processes per training worker
    augment_on_device: bool = False  # AGW augmentation as one batched op on the training device (loader workers only decode)
    precision: str = "auto"  # fp32 | bf16 (autocast; losses and distances stay float32) | auto: bf16 on a GPU with native bf16 (compute capability 8.0+; else fp32 and a warning), fp32 on CPU; explicit bf16 on an older GPU is an error
    memory_format: str = "auto"  # contiguous | channels_last | auto: channels_last with use_gpu, else contiguous
    compile: str = "auto"  # none | regions (torch.compile of the stems, trunk and pooling) | auto: regions on a GPU with a C compiler (without one: none and a warning), none on CPU; regions without a C compiler is an error
    log_every: int = 10  # steps between reading the losses back from the device (logs, MLflow step metrics, NaN check)
    checkpoint_every: int = 1  # epochs between checkpoints
    validate_every: int = 1  # epochs between held-out validations
    max_failures: int = 2  # Ray FailureConfig retries of the worker group (and of each Tune trial)
    ray_address: str = ""  # "": start a local Ray instance; else join this cluster ("auto", "host:6379", "ray://...")
    storage: str = "ray_results"  # checkpoints and Tune state: a path (relative: to the project) or an s3://, gs:// URI shared by all nodes

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "train.epochs", "must be >= 1")
        _check(self.iters_per_epoch >= 0, "train.iters_per_epoch", "must be >= 0")
        _check(self.identities_per_batch >= 2, "train.identities_per_batch", "must be >= 2")
        _check(self.instances_per_modality >= 1, "train.instances_per_modality", "must be >= 1")
        _check(self.lr > 0, "train.lr", "must be > 0")
        _check(self.backbone_lr > 0, "train.backbone_lr", "must be > 0")
        _check(self.lr_scaling in ("none", "linear"), "train.lr_scaling",
               f"must be one of ['none', 'linear'], got {self.lr_scaling!r}")
        _check(0 <= self.momentum < 1, "train.momentum", "must be in [0, 1)")
        _check(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        _check(self.warmup_epochs >= 0, "train.warmup_epochs", "must be >= 0")
        _check(list(self.milestones) == sorted(self.milestones), "train.milestones", "must be ascending")
        _check(self.num_workers >= 1, "train.num_workers", "must be >= 1")
        _check(self.cpus_per_worker >= 1, "train.cpus_per_worker", "must be >= 1")
        _check(self.loader_workers >= 0, "train.loader_workers", "must be >= 0")
        _check(self.checkpoint_every >= 1, "train.checkpoint_every", "must be >= 1")
        _check(self.validate_every >= 1, "train.validate_every", "must be >= 1")
        _check(self.max_failures >= 0, "train.max_failures", "must be >= 0")
        _check(self.precision in ("auto", "fp32", "bf16"), "train.precision", "must be auto, fp32 or bf16")
        _check(self.memory_format in ("auto", "contiguous", "channels_last"), "train.memory_format",
               "must be auto, contiguous or channels_last")
        _check(self.compile in ("auto", "none", "regions"), "train.compile", "must be auto, none or regions")
        _check(self.log_every >= 1, "train.log_every", "must be >= 1")
        _check(bool(self.storage.strip()), "train.storage", "must name a folder or a URI")


@dataclass(frozen=True)
class TuneConfig:
    """Ray Tune search over memory size S and temperature T (ASHA or FIFO on validation mAP)."""

    num_samples: int = 8  # trials
    memory_sizes: tuple[int, ...] = (8, 16, 32, 64)  # choices for model.memory_size: one step's views (2K) to several steps
    temperature_min: float = 1.0  # log-uniform range of loss.temperature
    temperature_max: float = 8.0
    epochs: int = 6  # epochs per trial after the recipe's warm-up (a trial runs train.warmup_epochs + tune.epochs)
    scheduler: Literal["asha", "fifo"] = "asha"  # asha: stop weak trials at rungs counted after the warm-up; fifo: run every trial to the end
    grace_period: int = 2  # ASHA: epochs after the warm-up before a trial may be stopped
    reduction_factor: int = 2  # ASHA halving rate
    max_concurrent: int = 2  # trials at once
    seed: int = 0  # search seed
    metric: Literal["val_mAP_mean", "val_mAP"] = "val_mAP_mean"  # what ASHA's rungs and the best trial are judged on: the mean held-out val_mAP of the epochs after the warm-up so far, or the epoch's own val_mAP (noisier: docs/tuning.md)
    gpus_per_trial: float = 0.0  # GPUs one trial's Ray Train workers reserve in all, split evenly over train.num_workers (0.5: two trials share a GPU; needs train.use_gpu); 0: train.use_gpu decides (one GPU per worker, or none)
    cpus_per_trial: int = 0  # CPUs one trial's Ray Train workers reserve in all, split evenly over train.num_workers (each worker's torch threads); 0: train.num_workers * train.cpus_per_worker
    driver_cpus: float = 1.0  # CPUs one trial's driver (the Tune function trainable that runs its TorchTrainer) reserves, on top of cpus_per_trial

    def __post_init__(self) -> None:
        _check(self.num_samples >= 1, "tune.num_samples", "must be >= 1")
        _check(len(self.memory_sizes) > 0 and min(self.memory_sizes) >= 1,
               "tune.memory_sizes", "must be non-empty, each >= 1")
        _check(0 < self.temperature_min <= self.temperature_max, "tune.temperature_min",
               "need 0 < temperature_min <= temperature_max")
        _check(self.epochs >= 1, "tune.epochs", "must be >= 1")
        _check(1 <= self.grace_period <= self.epochs, "tune.grace_period", "must be in 1..tune.epochs")
        _check(self.reduction_factor >= 2, "tune.reduction_factor", "must be >= 2")
        _check(self.max_concurrent >= 1, "tune.max_concurrent", "must be >= 1")
        _check(math.isfinite(self.gpus_per_trial) and self.gpus_per_trial >= 0, "tune.gpus_per_trial",
               f"must be >= 0 (0.5: two trials share a GPU), got {self.gpus_per_trial}")
        _check(self.cpus_per_trial >= 0, "tune.cpus_per_trial",
               f"must be >= 0 (0: train.num_workers * train.cpus_per_worker), got {self.cpus_per_trial}")
        _check(math.isfinite(self.driver_cpus) and self.driver_cpus >= 1e-4, "tune.driver_cpus",
               f"must be >= 0.0001 (Ray's resolution; a trial's driver needs a share of a CPU), got {self.driver_cpus}")


METRIC_NAMES: tuple[str, ...] = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")  # = vireid.evaluation.metrics
REGDB_DIRECTIONS: tuple[str, ...] = ("v2t", "t2v")


def check_headline(headline: str, sysu_modes: tuple[str, ...], sysu_shots: tuple[str, ...]) -> None:
    """``eval.headline`` names a metric the evaluate stage writes: ``sysu/<mode>/<shot>/<metric>``
    with the mode and shot among those run, or ``regdb/<v2t|t2v>/<metric>``."""
    key = "eval.headline"
    parts = headline.split("/")
    family = parts[0]
    _check(family in ("sysu", "regdb"), key,
           f"{headline!r} must start with sysu/ or regdb/ (e.g. sysu/all/single/mAP, regdb/v2t/mAP)")
    if family == "sysu":
        _check(len(parts) == 4, key, f"{headline!r} is not sysu/<mode>/<shot>/<metric> (e.g. sysu/all/single/mAP)")
        _check(parts[1] in sysu_modes, key,
               f"{headline!r}: mode {parts[1]!r} is not run (eval.sysu_modes: {list(sysu_modes)})")
        _check(parts[2] in sysu_shots, key,
               f"{headline!r}: shot {parts[2]!r} is not run (eval.sysu_shots: {list(sysu_shots)})")
    else:
        _check(len(parts) == 3, key, f"{headline!r} is not regdb/<direction>/<metric> (e.g. regdb/v2t/mAP)")
        _check(parts[1] in REGDB_DIRECTIONS, key,
               f"{headline!r}: direction {parts[1]!r} is not one of {list(REGDB_DIRECTIONS)}")
    _check(parts[-1] in METRIC_NAMES, key,
           f"{headline!r}: metric {parts[-1]!r} is not one of {list(METRIC_NAMES)}")


@dataclass(frozen=True)
class EvalConfig:
    """Which protocols to run and how."""

    sysu_modes: tuple[str, ...] = ("all", "indoor")  # SYSU search modes
    sysu_shots: tuple[str, ...] = ("single", "multi")  # SYSU gallery shots
    sysu_sampler: Literal["community", "official"] = "community"  # gallery sampler
    official_perm_path: str = ""  # rand_perm_cam.mat for the official sampler
    trials: int = 10  # gallery trials (SYSU) / split trials averaged (RegDB)
    flip: bool = True  # flip test-time augmentation
    rerank: bool = False  # k-reciprocal re-ranking
    batch_size: int = 128  # images per feature-extraction batch
    query_chunk: int = 1024  # queries per metric chunk (bounds memory)
    stable_argsort: bool = False  # ties: False = numpy default argsort (the AGW reference), True = lower gallery index first
    max_rank: int = 20  # length of the reported CMC curve (Rank-1..Rank-max_rank)
    headline: str = "sysu/all/single/mAP"  # metric that decides registry promotion

    def __post_init__(self) -> None:
        for m in self.sysu_modes:
            _check(m in ("all", "indoor"), "eval.sysu_modes", f"unknown mode {m!r}")
        for s in self.sysu_shots:
            _check(s in ("single", "multi"), "eval.sysu_shots", f"unknown shot {s!r}")
        _check(1 <= self.trials <= 10, "eval.trials", "must be in 1..10")
        _check(self.batch_size >= 1, "eval.batch_size", "must be >= 1")
        _check(self.query_chunk >= 1, "eval.query_chunk", "must be >= 1")
        _check(self.max_rank >= 20, "eval.max_rank", "must be >= 20 (Rank-20 is a headline metric)")
        _check(self.sysu_sampler != "official" or bool(self.official_perm_path.strip()), "eval.official_perm_path",
               "eval.sysu_sampler official needs the path of SYSU-MM01's rand_perm_cam.mat")
        check_headline(self.headline, self.sysu_modes, self.sysu_shots)


@dataclass(frozen=True)
class TrackConfig:
    """MLflow tracking and registry."""

    tracking_uri: str = ""  # empty: local store sqlite:///<repo>/mlruns/mlflow.db; else a DB URI or http://server
    artifact_location: str = ""  # artifact root of a new experiment; empty: <repo>/mlruns/artifacts locally, the store's default otherwise
    experiment: str = "vireid"  # MLflow experiment name
    model_name: str = "vireid"  # registered model name
    champion_alias: str = "champion"  # alias moved to a better model
    challenger_alias: str = "challenger"  # alias given to a model that did not beat the champion

    def __post_init__(self) -> None:
        _check(bool(self.experiment), "track.experiment", "must not be empty")
        _check(bool(self.model_name), "track.model_name", "must not be empty")
        _check(bool(self.champion_alias) and bool(self.challenger_alias), "track.champion_alias",
               "aliases must not be empty")
        _check(self.champion_alias != self.challenger_alias, "track.challenger_alias",
               f"must differ from track.champion_alias ({self.champion_alias!r})")


@dataclass(frozen=True)
class Config:
    """The whole of ``params.yaml``."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    track: TrackConfig = field(default_factory=TrackConfig)

    def __post_init__(self) -> None:
        if self.loss.distill:
            _check(self.model.fusion or self.model.memory, "loss.distill",
                   "needs a teacher: turn on model.fusion or model.memory")
        if self.loss.infer != "none":
            needs = "memory" if self.loss.infer == "memory" else "fusion"
            _check(getattr(self.model, needs), "loss.infer",
                   f"{self.loss.infer!r} needs model.{needs}: turn it on or set loss.infer: none")
        check_trial_resources(self.train, self.tune)
        family = self.eval.headline.split("/", 1)[0]
        _check(family == self.data.dataset, "eval.headline",
               f"{self.eval.headline!r} is a {family} metric but data.dataset is {self.data.dataset!r} "
               f"(e.g. {'regdb/v2t/mAP' if self.data.dataset == 'regdb' else 'sysu/all/single/mAP'})")


def check_trial_resources(train: TrainConfig, tune: TuneConfig) -> None:
    """Cross-check of ``tune.gpus_per_trial`` and ``tune.cpus_per_trial`` against the trial's
    Ray Train layout (``train.num_workers`` workers, ``train.use_gpu``): each worker gets an
    equal share, and Ray accepts a share of a GPU below 1 or a whole number of GPUs."""
    n = train.num_workers
    if tune.gpus_per_trial > 0:
        _check(train.use_gpu, "tune.gpus_per_trial",
               f"{tune.gpus_per_trial} GPUs per trial need train.use_gpu: true (or set it to 0)")
        share = tune.gpus_per_trial / n
        _check(share <= 1 or share == int(share), "tune.gpus_per_trial",
               f"{tune.gpus_per_trial} GPUs over train.num_workers: {n} gives {share:g} per worker; "
               "Ray takes a fraction of one GPU or a whole number of GPUs per worker")
        _check(share >= 1e-4, "tune.gpus_per_trial",
               f"{share:g} GPU per worker is below Ray's resolution (0.0001)")
    if tune.cpus_per_trial > 0:
        _check(tune.cpus_per_trial % n == 0, "tune.cpus_per_trial",
               f"{tune.cpus_per_trial} CPUs do not split evenly over train.num_workers: {n} "
               "(each worker gets a whole number of CPUs)")


def check_schedule(cfg: Config) -> None:
    """Cross-check of ``train``: every milestone and the warm-up fall within
    ``train.epochs`` (0-based epoch ``e`` decays at milestone ``m`` when ``e >= m``, so a
    milestone >= epochs never takes effect). Not part of :class:`Config` itself: the tune
    stage shortens ``train.epochs`` per trial; :func:`check_params` applies it to a
    parameters file."""
    t = cfg.train
    for i, m in enumerate(t.milestones):
        _check(1 <= m < t.epochs, f"train.milestones[{i}]",
               f"{m} is outside 1..{t.epochs - 1} (train.epochs is {t.epochs}: a milestone at or "
               "after the last epoch never takes effect)")
    _check(t.warmup_epochs <= t.epochs, "train.warmup_epochs",
           f"{t.warmup_epochs} is beyond train.epochs ({t.epochs})")


def check_params(cfg: Config) -> None:
    """Checks of a whole parameters file beyond each :class:`Config`: :func:`check_schedule`."""
    check_schedule(cfg)


# ---------------------------------------------------------------------------------------
# loading

T = TypeVar("T")


def _coerce(value: Any, typ: Any, key: str) -> Any:
    origin = get_origin(typ)
    if origin is Literal:
        _check(value in get_args(typ), key, f"must be one of {list(get_args(typ))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(typ) if a is not type(None)]
        if value is None and len(args) < len(get_args(typ)):
            return None
        return _coerce(value, args[0], key)
    if origin is tuple:
        _check(isinstance(value, (list, tuple)), key, f"must be a list, got {value!r}")
        (item,) = {a for a in get_args(typ) if a is not Ellipsis}
        return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(typ):
        return build(typ, value, key)
    if typ is bool:
        _check(isinstance(value, bool), key, f"must be true or false, got {value!r}")
        return value
    if typ is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key,
               f"must be an integer, got {value!r}")
        return value
    if typ is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), key,
               f"must be a number, got {value!r}")
        _check(math.isfinite(value), key, f"must be a finite number, got {value!r}")
        return float(value)
    if typ is str:
        _check(isinstance(value, str), key, f"must be a string, got {value!r}")
        return value
    raise TypeError(f"{key}: unsupported config type {typ!r}")


def build(cls: type[T], data: Mapping[str, Any] | None, where: str) -> T:
    """Build dataclass ``cls`` from a mapping, naming ``where.key`` in every error."""
    data = {} if data is None else data
    _check(isinstance(data, Mapping), where, f"must be a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(names), key=str)  # keys of mixed types (1:, foo:) sort as text
    _check(not unknown, f"{where}.{unknown[0]}" if unknown else where,
           f"unknown key (known keys: {', '.join(names)})")
    kwargs = {name: _coerce(data[name], hints[name], f"{where}.{name}") for name in names if name in data}
    return cls(**kwargs)


SECTIONS: tuple[str, ...] = ("data", "model", "loss", "train", "tune", "eval", "track")


def config_from_dict(params: Mapping[str, Any]) -> Config:
    """Validate a parsed ``params.yaml`` into a :class:`Config`."""
    _check(isinstance(params, Mapping), "params.yaml", "top level must be a mapping")
    hints = get_type_hints(Config)
    names = [f.name for f in dataclasses.fields(Config)]
    unknown = sorted(set(params) - set(names), key=str)
    _check(not unknown, str(unknown[0]) if unknown else "", f"unknown section (known: {', '.join(names)})")
    return Config(**{n: build(hints[n], params.get(n), n) for n in names})


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict (lists for tuples), e.g. for logging as flat MLflow params."""
    return _plain(dataclasses.asdict(config))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def replace(config: Config, **sections: Mapping[str, Any]) -> Config:
    """Return a copy with some fields of some sections replaced, re-validated.

    ``replace(cfg, model={"memory_size": 4}, loss={"temperature": 2.0})``
    """
    plain = config_to_dict(config)
    for section, values in sections.items():
        _check(section in plain, section, "unknown section")
        plain[section].update(values)
    return config_from_dict(plain)
