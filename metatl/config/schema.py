"""The typed run configuration: every key, its type and its default.

The defaults are the main job: ProtoNet with a Conv-4 on the 28x28 glyph benchmark,
trained on 20-way 5-shot episodes and tested on 5-way 1-shot and 5-shot.

Every numeric field states its allowed range next to it (``metadata=between(...)``, see
:mod:`metatl.config.domains`); nan and infinities are never allowed. The upper bounds are
sanity fences, far above any real run, that catch typos and overflowing values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from metatl.config.domains import between, fraction, positive

__all__ = [
    "AdaptConfig",
    "CAMLConfig",
    "DataConfig",
    "EpisodesConfig",
    "FineTuneConfig",
    "IMAMLConfig",
    "LayersConfig",
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

STEPS = 10_000_000  # steps, and intervals counted in steps
EPOCHS = 100_000
ITERS = 100_000  # optimiser iterations inside one episode
SEED = 2**32 - 1  # numpy's seeds are 32-bit
SIZE = 2048  # image height and width, pixels
COUNT = 10_000  # classes, images per class, episodes in a meta-batch
EPISODES = 1_000_000  # episodes of a validation or test set
LR = 10.0
DECAY = 10_000.0  # weight decays and L2 penalties


@dataclass(frozen=True)
class DataConfig:
    """Where episodes come from.

    ``dataset`` is one of ``glyphs`` (``root`` built by ``python -m episodes.glyphs``),
    ``image_folder`` (``root/<split>/<class>/*.png``), ``omniglot`` (official layout: train
    and validation classes from ``images_background``, test from ``images_evaluation``) or
    ``mini_imagenet`` (Ravi & Larochelle CSVs) or ``fashion_mnist`` (Debian's
    ``dataset-fashion-mnist`` IDX files, ``root=/usr/share/datasets/fashion-mnist``; splits
    ``train`` and ``test`` of the same ten classes).
    """

    dataset: str = "glyphs"
    root: str = "data/glyphs"
    # Images are loaded at this size; model.backbone needs a minimum (checked when it is built).
    image_size: int = field(default=28, metadata=between(1, SIZE))
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    workers: int = field(default=0, metadata=between(0, 256, "0: load in the main process"))


@dataclass(frozen=True)
class EpisodesConfig:
    """Shape of the meta-training episodes."""

    way: int = field(default=20, metadata=between(2, COUNT))
    shot: int = field(default=5, metadata=between(1, COUNT))
    query: int = field(default=5, metadata=between(1, COUNT))


@dataclass(frozen=True)
class MAMLConfig:
    """The MAML family: ``model.algorithm`` maml, fomaml (first_order), anil (adapt=head) or
    metasgd (meta_sgd); the named variant forces its setting."""

    inner_steps: int = field(default=1, metadata=between(0, ITERS))
    test_inner_steps: int = field(default=10, metadata=between(0, ITERS))
    inner_lr: float = field(default=0.4, metadata=positive(LR))
    first_order: bool = False
    adapt: str = "all"  # all | head | top:N
    head: str = "zero"  # zero (fresh per episode, any way) | learned (fixes the way)
    bn: str = "transductive"  # transductive | running
    meta_sgd: bool = False
    # What the second-order inner loop keeps for the backward: store (every step's graph:
    # memory grows with inner_steps) | checkpoint (each step recomputed in the backward: the
    # same meta-gradient, memory flat in inner_steps, about one more support forward and
    # backward per step). iMAML keeps no inner graph and ignores it.
    inner_memory: str = "store"


@dataclass(frozen=True)
class IMAMLConfig:
    """``model.algorithm=imaml``: implicit MAML; its inner loop takes ``model.maml``'s steps,
    rate, adapt, head and bn (not first_order, meta_sgd or inner_memory)."""

    # The proximal strength lambda of the inner objective (model.maml.inner_lr * lam < 2).
    lam: float = field(default=2.0, metadata=positive(DECAY))
    # Conjugate-gradient iterations (Hessian-vector products) per episode.
    cg_steps: int = field(default=5, metadata=between(1, ITERS))
    # Added to the diagonal of the implicit system: 0 is the exact system; more steadies CG
    # where the support loss has negative curvature, and biases the gradient.
    cg_damping: float = field(default=0.0, metadata=between(0, DECAY))


@dataclass(frozen=True)
class CAMLConfig:
    """``model.algorithm=caml``: a transformer over the episode's (feature, label) tokens."""

    # Token width: dim - max_way feature dimensions and max_way label dimensions.
    dim: int = field(default=128, metadata=between(3, 65_536))
    layers: int = field(default=2, metadata=between(1, 1000))
    heads: int = field(default=4, metadata=between(1, 1024, "must divide dim"))
    ffn_mult: int = field(default=2, metadata=between(1, 64))
    # Label slots: the largest way the learner can classify (train, validation and test).
    max_way: int = field(default=32, metadata=between(2, COUNT))
    dropout: float = field(default=0.0, metadata=fraction())
    freeze_backbone: bool = False


@dataclass(frozen=True)
class ModelConfig:
    """The learner and its backbone."""

    algorithm: str = "protonet"
    backbone: str = "conv4"
    # "" = fresh initialisation; else a torchvision weight name (IMAGENET1K_V1, DEFAULT), a
    # weights file, or a metatl checkpoint whose backbone is reused.
    pretrained: str = ""
    # Backbone input size; 0 = data.image_size. Episodes are resized to it on the fly.
    input_size: int = field(default=0, metadata=between(0, SIZE, "0: data.image_size"))
    distance: str = "sqeuclidean"
    cosine_scale: float = field(default=10.0, metadata=positive(10_000.0))
    maml: MAMLConfig = field(default_factory=MAMLConfig)
    imaml: IMAMLConfig = field(default_factory=IMAMLConfig)
    caml: CAMLConfig = field(default_factory=CAMLConfig)


@dataclass(frozen=True)
class LinearProbeConfig:
    """The ``linear`` method: logistic regression on frozen features, per episode."""

    normalize: str = "l2"  # none | l2 | center | center_l2
    weight_decay: float = field(default=1e-3, metadata=between(0, DECAY))
    max_iter: int = field(default=100, metadata=between(1, ITERS))


@dataclass(frozen=True)
class FineTuneConfig:
    """The ``finetune`` method: a head, then the top ``n_blocks`` blocks (-1: all)."""

    n_blocks: int = field(default=1, metadata=between(-1, 1000, "-1: all"))
    steps: int = field(default=50, metadata=between(0, ITERS))
    head_lr: float = field(default=1e-2, metadata=positive(LR))
    backbone_lr: float = field(default=1e-3, metadata=between(0, LR, "0: blocks stay fixed"))
    weight_decay: float = field(default=1e-3, metadata=between(0, DECAY))
    normalize: str = "l2"  # none | l2 | center | center_l2
    head_iters: int = field(default=100, metadata=between(1, ITERS))
    batch_norm: str = "frozen"  # frozen | adapt
    optimizer: str = "sgd"  # sgd | adam


@dataclass(frozen=True)
class OptimConfig:
    """Outer-loop optimiser (Adam) and step decay of its learning rate."""

    lr: float = field(default=1e-3, metadata=positive(LR))
    weight_decay: float = field(default=0.0, metadata=between(0, DECAY))
    lr_decay_every: int = field(default=2000, metadata=between(1, STEPS))
    # The learning rate is multiplied by this every lr_decay_every steps.
    lr_decay: float = field(default=0.5, metadata=positive(1.0, "1: constant"))


@dataclass(frozen=True)
class TrainConfig:
    """Meta-training length, logging and periodic validation on a fixed episode set."""

    steps: int = field(default=4000, metadata=between(0, STEPS, "0: test only"))
    meta_batch: int = field(default=1, metadata=between(1, COUNT))
    log_every: int = field(default=50, metadata=between(1, STEPS))
    val_every: int = field(default=500, metadata=between(1, STEPS))
    val_episodes: int = field(default=300, metadata=between(1, EPISODES))
    val_way: int = field(default=5, metadata=between(2, COUNT))
    val_shot: int = field(default=1, metadata=between(1, COUNT))
    val_query: int = field(default=15, metadata=between(1, COUNT))
    val_seed: int = field(default=2, metadata=between(0, SEED))
    # Also write last.pt (with optimiser, scheduler and RNG states) every this many steps,
    # besides at each validation and on SIGTERM/SIGINT; 0 = only then.
    checkpoint_every: int = field(default=0, metadata=between(0, STEPS, "0: at validation only"))
    # Under torchrun, how a step's gradients are summed over the ranks: all_reduce (each
    # rank's partial sum, one all-reduce; equal to one process to round-off) | episode_order
    # (every episode's gradient gathered and added in episode order: bit for bit one
    # process's weights, at meta_batch / ranks gradient copies per rank).
    gradient_sum: str = "all_reduce"


@dataclass(frozen=True)
class TestConfig:
    """The final test: a fixed seeded episode set per shot, scored for every method."""

    way: int = field(default=5, metadata=between(2, COUNT))
    shots: list[int] = field(default_factory=lambda: [1, 5], metadata=between(1, COUNT))
    query: int = field(default=15, metadata=between(1, COUNT))
    episodes: int = field(default=600, metadata=between(1, EPISODES))
    seed: int = field(default=3, metadata=between(0, SEED))
    # Scored on the same episodes as the trained learner (e.g. linear, finetune, protonet).
    methods: list[str] = field(default_factory=list)
    pixel_baseline: bool = True


@dataclass(frozen=True)
class PretrainConfig:
    """``python -m metatl.pretrain``: pretraining of the backbone, then ``model.pretrained``
    for meta-training or fine-tuning.

    ``objective``: ``supervised`` (cross-entropy over every training class), ``rotation``
    (predict which of 0/90/180/270 degrees an image was turned by; Gidaris et al. 2018),
    ``simclr`` (two augmented views of an image, NT-Xent; Chen et al. 2020) or
    ``supervised+rotation`` (the supervised loss plus ``rotation_weight`` times the rotation
    loss; Gidaris et al. 2019). ``rotation`` and ``simclr`` read the training images only,
    never their labels. Validation is few-shot whatever the objective: nearest class mean on
    the backbone's features over the ``train.val_*`` episodes, after every ``val_every``
    epochs; the best is kept.
    """

    epochs: int = field(default=20, metadata=between(1, EPOCHS))
    batch_size: int = field(default=128, metadata=between(2, 1_000_000, "BatchNorm needs 2"))
    # SGD with momentum, cosine decay to 0 over all epochs
    lr: float = field(default=0.05, metadata=positive(LR))
    momentum: float = field(default=0.9, metadata=fraction())
    weight_decay: float = field(default=5e-4, metadata=between(0, DECAY))
    label_smoothing: float = field(default=0.0, metadata=fraction())
    augment: str = "crop"  # none | crop (random crop after padding) | crop_flip
    # pixels of padding before the random crop, at the input size
    crop_padding: int = field(default=4, metadata=between(0, SIZE))
    val_every: int = field(default=1, metadata=between(1, EPOCHS))
    objective: str = "supervised"  # supervised | rotation | simclr | supervised+rotation
    # supervised+rotation: weight of the rotation loss next to the supervised one (paper: 1)
    rotation_weight: float = field(default=1.0, metadata=between(0, 100))
    # simclr: NT-Xent temperature (the paper's CIFAR-10 value) and projection head output size
    simclr_temperature: float = field(default=0.5, metadata=between(0.01, 10))
    simclr_dim: int = field(default=128, metadata=between(1, 65_536))
    # simclr views (instead of augment): a random crop of this fraction of the area or more
    # (the paper's 0.08 loses a 28x28 glyph), resized back; brightness and contrast factors
    # in [1 - simclr_jitter, 1 + simclr_jitter] with probability 0.8 (0.8 x strength 0.5)
    simclr_crop_scale: float = field(default=0.3, metadata=positive(1))
    simclr_jitter: float = field(default=0.4, metadata=fraction())


@dataclass(frozen=True)
class LayersConfig:
    """``python -m metatl.transfer layers``: the layer-transfer study of Yosinski et al. 2014.

    The classes of the ``pool`` splits are split into tasks A and B by each of ``splits``;
    each class keeps a ``held_out`` fraction of its images for testing. For every split and
    seed, baseA and baseB are trained from scratch (with the ``pretrain`` settings), then for
    n = ``first_n`` .. ``last_n`` each of ``treatments``: BnB / AnB (the first n blocks copied
    from baseB / baseA and frozen, the rest re-initialised and trained on B), BnB+ / AnB+ (the
    same, everything fine-tuned) and ``random`` (the first n blocks random and frozen).
    """

    # random (similar tasks) | stroke | radical (dissimilar; Unihan) | groups (groups_file)
    splits: list[str] = field(default_factory=lambda: ["random", "stroke"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata=between(0, SEED))
    treatments: list[str] = field(default_factory=lambda: ["BnB", "BnB+", "AnB", "AnB+", "random"])
    first_n: int = field(default=1, metadata=between(1, 1000))
    last_n: int = field(default=0, metadata=between(0, 1000, "0: the backbone's blocks - 1"))
    # The data splits whose classes form the pool that A and B are drawn from.
    pool: list[str] = field(default_factory=lambda: ["train", "val", "test"])
    # Classes per task kept (a seeded sample of each half); 0: all.
    max_classes: int = field(default=0, metadata=between(0, 10_000_000, "0: all"))
    held_out: float = field(default=0.2, metadata=positive(0.9))
    # For splits=[groups]: a CSV file of "class,group" lines, and the groups that form task A.
    groups_file: str = ""
    a_groups: list[str] = field(default_factory=list)
    # Unihan data (a Unihan.zip or a folder of Unihan_*.txt[.bz2]); "": Debian's unicode-data.
    unihan: str = ""


@dataclass(frozen=True)
class AdaptConfig:
    """``python -m metatl.adapt``: unsupervised domain adaptation, source -> target.

    The source domain is ``data.train_split`` (labelled; a classifier over its classes is
    trained with the ``pretrain`` loop settings: epochs, batch size, SGD, cosine rate,
    augmentation) and ``data.val_split`` (labelled source images, for label-free model
    selection); ``target_split`` holds the target images, read without their labels;
    ``data.test_split`` is the labelled target test set, used for scoring only.

    ``method`` is what the training adds on the unlabelled target batches: ``source_only``
    (nothing, the control), ``dann`` (a domain classifier behind a gradient-reversal layer;
    Ganin et al. 2016) or ``mcc`` (minimum class confusion; Jin et al. 2020). ``test_time``
    lists what is applied to the trained model before scoring, each reported next to the model
    as trained: ``adabn`` (BatchNorm statistics re-estimated on the target images; Li et al.
    2017) and ``tent`` (entropy minimisation of the normalisation affine parameters on the
    target images; Wang et al. 2021). Each default is the paper's.
    """

    method: str = "source_only"  # source_only | dann | mcc
    test_time: list[str] = field(default_factory=lambda: ["adabn", "tent"])
    target_split: str = "target_train"
    # Images per target batch of a training step; 0: pretrain.batch_size.
    target_batch_size: int = field(default=0, metadata=between(0, 1_000_000, "0: batch size"))
    # How the backbone sees a step's two batches: per_domain (one pass each, each domain
    # normalised by its own batch statistics; pytorch-adapt; measured better for DANN, see
    # the README) or joint (one pass over source + target with shared statistics; TLlib)
    domain_batches: str = "per_domain"
    # dann: loss weight, domain classifier width (the paper's 1024-1024 MLP), and the
    # gradient-reversal schedule 2 / (1 + exp(-gamma * progress)) - 1 (gamma = 10)
    dann_weight: float = field(default=1.0, metadata=between(0, 100))
    dann_hidden: int = field(default=1024, metadata=between(1, 65_536))
    dann_gamma: float = field(default=10.0, metadata=between(0, 1000))
    # mcc: loss weight and the temperature of its softmax (the paper's 1 and 2.5)
    mcc_weight: float = field(default=1.0, metadata=between(0, 100))
    mcc_temperature: float = field(default=2.5, metadata=between(0.01, 100))
    # tent: Adam on the BatchNorm scales and shifts (the paper's lr for digits and CIFAR:
    # 1e-3, batch 128), over tent_epochs passes of the target images
    tent_lr: float = field(default=1e-3, metadata=positive(LR))
    tent_batch_size: int = field(default=128, metadata=between(2, 1_000_000, "BatchNorm"))
    tent_epochs: int = field(default=1, metadata=between(1, EPOCHS))
    # The label-free validators at every validation: SND's temperature (Saito et al. 2021)
    # and the target images they score (a seeded sample; 0: all of target_split).
    snd_temperature: float = field(default=0.05, metadata=between(0.001, 100))
    score_images: int = field(default=2000, metadata=between(0, 10_000_000, "0: all"))
    # Few-shot episodes (test.way, test.shots, test.query, test.episodes) on this split of
    # the target domain after adaptation, nearest class mean on the features; "": none.
    fewshot_split: str = ""


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
class CompareConfig:
    """``python -m metatl.transfer compare``: what to transfer from which source, and whether.

    Every source (``NAME=SPEC``: ``conv4@random``, ``mobilenet_v2@IMAGENET1K_V1``, a metatl
    checkpoint or run directory) is scored on the same ``way``-way episodes of the target
    split ``split`` per shot in ``shots``: nearest class mean and linear probe on every block,
    fine-tuning the top N blocks for every N (``finetune.*`` settings; N = all blocks is full
    fine-tuning) and the checkpoint's own adaptation; next to training ``scratch`` from a
    random initialisation with the full fine-tuning recipe and raw pixels. With
    ``all_labels`` the same methods are also trained on every image of ``data.train_split``
    (``pretrain.*`` settings) and tested on every image of ``split``.
    """

    sources: list[str] = field(default_factory=list)
    split: str = ""  # the target split episodes come from; "": data.test_split
    shots: list[int] = field(default_factory=lambda: [1, 5, 20], metadata=between(1, COUNT))
    way: int = field(default=5, metadata=between(2, COUNT))
    query: int = field(default=15, metadata=between(1, COUNT))
    episodes: int = field(default=100, metadata=between(1, EPISODES))
    seed: int = field(default=0, metadata=between(0, SEED))
    probes: list[str] = field(default_factory=lambda: ["ncm", "linear"])  # on every block
    finetune: bool = True  # fine-tune the top N blocks
    # The N of finetune@N (N >= a source's blocks: all of them, full fine-tuning); []: every N.
    finetune_blocks: list[int] = field(
        default_factory=list, metadata=between(1, 1000, "[]: every N", empty=True)
    )
    own: bool = True  # a meta-training checkpoint's own adaptation
    scratch: str = "conv4"  # the backbone trained from scratch; "": none
    all_labels: bool = False
    # Input size of <backbone>@<weights> sources (e.g. 84 for MobileNetV2 on small images).
    input_size: int = field(default=0, metadata=between(0, SIZE, "0: the target's size"))
    # A seeded sample of the split's images for the scores and the statistics gap.
    score_images: int = field(default=2000, metadata=between(10, 10_000_000))
    # The advice's two axes: the statistics gap below which a source counts as similar
    # (0.25: target channels sit on average within half a source standard deviation, a
    # "small" effect size d < 0.5), and the labelled images per class from which data is large.
    similar_below: float = field(default=0.25, metadata=positive(1e6))
    large_from: int = field(default=100, metadata=between(1, COUNT))
    feature_cache: bool = True


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
    layers: LayersConfig = field(default_factory=LayersConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    seed: int = field(default=0, metadata=between(0, SEED))
    device: str = "auto"  # auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps
    # auto (bf16 where the hardware has it natively, else fp32) | fp32 | bf16 | fp16
    # (autocast; fp16 also scales the loss)
    precision: str = "fp32"
    out_dir: str = "runs"
    # The run directory out_dir/<name>: one path component; "" = from the learner and time.
    name: str = ""
