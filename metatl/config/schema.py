"""The typed run configuration: every key, its type and its default.

The defaults are the main job: ProtoNet with a Conv-4 on the 28x28 glyph benchmark,
trained on 20-way 5-shot episodes and tested on 5-way 1-shot and 5-shot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "DataConfig",
    "EpisodesConfig",
    "FineTuneConfig",
    "LinearProbeConfig",
    "MAMLConfig",
    "ModelConfig",
    "OptimConfig",
    "PretrainConfig",
    "RunConfig",
    "TestConfig",
    "TrackingConfig",
    "TrainConfig",
    "WandbConfig",
]


@dataclass(frozen=True)
class DataConfig:
    """Where episodes come from.

    ``dataset`` is one of ``glyphs`` (``root`` built by ``python -m episodes.glyphs``),
    ``image_folder`` (``root/<split>/<class>/*.png``), ``omniglot`` (official layout: train
    and validation classes from ``images_background``, test from ``images_evaluation``) or
    ``mini_imagenet`` (Ravi & Larochelle CSVs).
    """

    dataset: str = "glyphs"
    root: str = "data/glyphs"
    image_size: int = 28
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    workers: int = 0


@dataclass(frozen=True)
class EpisodesConfig:
    """Shape of the meta-training episodes."""

    way: int = 20
    shot: int = 5
    query: int = 5


@dataclass(frozen=True)
class MAMLConfig:
    """The MAML family: ``model.algorithm`` maml, fomaml (first_order), anil (adapt=head) or
    metasgd (meta_sgd); the named variant forces its setting."""

    inner_steps: int = 1
    test_inner_steps: int = 10
    inner_lr: float = 0.4
    first_order: bool = False
    adapt: str = "all"  # all | head | top:N
    head: str = "zero"  # zero (fresh per episode, any way) | learned (fixes the way)
    bn: str = "transductive"  # transductive | running
    meta_sgd: bool = False


@dataclass(frozen=True)
class ModelConfig:
    """The learner and its backbone."""

    algorithm: str = "protonet"
    backbone: str = "conv4"
    # "" = fresh initialisation; else a torchvision weight name (IMAGENET1K_V1, DEFAULT), a
    # weights file, or a metatl checkpoint whose backbone is reused.
    pretrained: str = ""
    # Backbone input size; 0 = data.image_size. Episodes are resized to it on the fly.
    input_size: int = 0
    distance: str = "sqeuclidean"
    cosine_scale: float = 10.0
    maml: MAMLConfig = field(default_factory=MAMLConfig)


@dataclass(frozen=True)
class LinearProbeConfig:
    """The ``linear`` method: logistic regression on frozen features, per episode."""

    normalize: str = "l2"  # none | l2 | center | center_l2
    weight_decay: float = 1e-3
    max_iter: int = 100


@dataclass(frozen=True)
class FineTuneConfig:
    """The ``finetune`` method: a head, then the top ``n_blocks`` blocks (-1: all)."""

    n_blocks: int = 1
    steps: int = 50
    head_lr: float = 1e-2
    backbone_lr: float = 1e-3
    weight_decay: float = 1e-3
    normalize: str = "l2"  # none | l2 | center | center_l2
    head_iters: int = 100
    batch_norm: str = "frozen"  # frozen | adapt
    optimizer: str = "sgd"  # sgd | adam


@dataclass(frozen=True)
class OptimConfig:
    """Outer-loop optimiser (Adam) and step decay of its learning rate."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_decay_every: int = 2000
    lr_decay: float = 0.5


@dataclass(frozen=True)
class TrainConfig:
    """Meta-training length, logging and periodic validation on a fixed episode set."""

    steps: int = 4000
    meta_batch: int = 1
    log_every: int = 50
    val_every: int = 500
    val_episodes: int = 300
    val_way: int = 5
    val_shot: int = 1
    val_query: int = 15
    val_seed: int = 2
    # Also write last.pt (with optimiser, scheduler and RNG states) every this many steps,
    # besides at each validation and on SIGTERM/SIGINT; 0 = only then.
    checkpoint_every: int = 0


@dataclass(frozen=True)
class TestConfig:
    """The final test: a fixed seeded episode set per shot, scored for every method."""

    way: int = 5
    shots: list[int] = field(default_factory=lambda: [1, 5])
    query: int = 15
    episodes: int = 600
    seed: int = 3
    # Scored on the same episodes as the trained learner (e.g. linear, finetune, protonet).
    methods: list[str] = field(default_factory=list)
    pixel_baseline: bool = True


@dataclass(frozen=True)
class PretrainConfig:
    """``python -m metatl.pretrain``: supervised whole-class pretraining of the backbone
    (cross-entropy over every training class, then ``model.pretrained`` for meta-training).

    Validation is few-shot: nearest class mean on the backbone's features over the
    ``train.val_*`` episodes, after every ``val_every`` epochs; the best is kept.
    """

    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.05  # SGD with momentum, cosine decay to 0 over all epochs
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    augment: str = "crop"  # none | crop (random crop after padding) | crop_flip
    crop_padding: int = 4  # pixels of padding before the random crop, at the input size
    val_every: int = 1


@dataclass(frozen=True)
class WandbConfig:
    """Weights & Biases. ``mode=auto``: online when an API key is configured, else offline
    (sync later with ``wandb sync``)."""

    mode: str = "auto"  # auto | online | offline | disabled
    project: str = "metatl"
    entity: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    name: str = ""  # "" = the run directory's name


@dataclass(frozen=True)
class TrackingConfig:
    """Where runs are tracked besides the always-on ``metrics.jsonl``."""

    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass(frozen=True)
class RunConfig:
    """A whole run: ``python -m metatl.train`` builds everything from this."""

    data: DataConfig = field(default_factory=DataConfig)
    episodes: EpisodesConfig = field(default_factory=EpisodesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    test: TestConfig = field(default_factory=TestConfig)
    linear_probe: LinearProbeConfig = field(default_factory=LinearProbeConfig)
    finetune: FineTuneConfig = field(default_factory=FineTuneConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    seed: int = 0
    device: str = "auto"  # auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 also scales the loss)
    out_dir: str = "runs"
    name: str = ""
