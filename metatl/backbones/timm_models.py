"""Any timm model as a backbone: ``create_backbone("timm:<model name>")``.

timm is optional (``pip install timm``) and imported only when such a backbone is built.
The model is created with ``num_classes=0`` (pooled features); input size, mean and std come
from its ``pretrained_cfg``. A weight tag goes in the name (``timm:resnet18.a1_in1k``);
``pretrained="DEFAULT"`` loads that tag's weights from the Hugging Face cache (downloading
only if allowed), a file path or metatl checkpoint works as for every backbone.

``blocks``: when the model's children run one after another (timm's CNNs: ResNet, EfficientNet,
MobileNetV3, ConvNeXt ...), they are regrouped into ``stem``, one block per stage and a
``neck`` for what runs after the stages; this is checked numerically against timm's own
forward. Other models (vision transformers ...) are a single block.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metatl.backbones.adapted import AdaptedBackbone
from metatl.backbones.registry import UnknownBackboneError, register_backbone_family
from metatl.backbones.weights import (
    UnknownWeightsError,
    WeightsNotFoundError,
    cached_url_file,
    check_hash,
    download_allowed,
    load_state_into,
    load_weights_file,
)

__all__ = ["TimmBackbone", "hf_cache_dir", "import_timm"]

log = logging.getLogger(__name__)

_STAGE_CONTAINERS = ("stages", "layers", "blocks", "features")
_HF_FILES = ("model.safetensors", "pytorch_model.bin")

Layout = list[tuple[str, nn.Module]]


def import_timm() -> Any:
    """``import timm``, or an ImportError that says how to install it."""
    try:
        import timm
    except ImportError as err:
        raise ImportError(
            f"timm: backbones need the timm package, which is not installed ({err}); "
            "install it with `pip install timm`"
        ) from None
    return timm


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache (``HF_HUB_CACHE`` / ``HF_HOME``), where timm weights live."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _has_params(modules: Layout) -> bool:
    return any(True for _, m in modules for _ in m.parameters())


def _split_children(model: nn.Module) -> tuple[Layout, Layout, Layout]:
    """``(stem, stages, post)`` from the model's children, or ``([], [], [])`` if no stages."""
    children = list(model.named_children())
    names = [n for n, _ in children]
    for i, (name, module) in enumerate(children):
        if name in _STAGE_CONTAINERS and isinstance(module, nn.Sequential | nn.ModuleList):
            stages = [(f"stage{j}", m) for j, m in enumerate(module, start=1)]
            return children[:i], stages, children[i + 1 :]
    layers = [i for i, n in enumerate(names) if re.fullmatch(r"layer\d+", n)]
    if layers and layers == list(range(layers[0], layers[-1] + 1)):
        return (
            children[: layers[0]],
            children[layers[0] : layers[-1] + 1],
            children[layers[-1] + 1 :],
        )
    return [], [], []


def _layout(model: nn.Module, size: int) -> tuple[Layout, Layout, nn.Module]:
    """``(stem, stages, tail)`` of an eval-mode timm model; its children regrouped when running
    them one after another reproduces ``model(x)``, else the whole model as the stem."""
    stem, stages, post = _split_children(model)
    tail: nn.Module = nn.Identity()
    if stages and _has_params(post):
        stages = [*stages, ("neck", nn.Sequential(OrderedDict(post)))]
    elif stages:
        tail = nn.Sequential(OrderedDict(post))
    if stages:
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected, h = model(x), x
            for _, module in [*stem, *stages]:
                h = module(h)
            got = tail(h)
        if got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
            return stem, stages, tail
        log.info("timm %s does not run as a chain of its children: one block", type(model))
    return [("model", model)], [], nn.Identity()


class TimmBackbone(AdaptedBackbone):
    """A timm model without its classifier: ``[B, 3, H, W] -> [B, out_dim]``.

    Args:
        model_name: timm's model name, optionally with a weight tag (``resnet18.a1_in1k``).
        in_channels: 3, or 1 for grey input mapped exactly onto the RGB normalisation.
        image_size: Input size for the transform; default the pretrained config's.
    """

    def __init__(
        self, model_name: str, in_channels: int = 3, image_size: int | None = None
    ) -> None:
        timm = import_timm()
        if not timm.is_model(model_name):
            base = model_name.split(".")[0]
            close = difflib.get_close_matches(base, timm.list_models(), n=5, cutoff=0.7)
            raise UnknownBackboneError(
                f"unknown timm model '{model_name}'"
                + (f"; similar: {', '.join(close)}" if close else "")
            )
        model = timm.create_model(model_name, pretrained=False, num_classes=0).eval()
        cfg = dict(model.pretrained_cfg)
        size = image_size or int(cfg.get("input_size", (3, 224, 224))[-1])
        if image_size and cfg.get("fixed_input_size") and image_size != cfg["input_size"][-1]:
            raise ValueError(f"timm model {model_name} takes only {cfg['input_size'][-1]} px input")
        stem, stages, tail = _layout(model, size)
        classifier = cfg.get("classifier") or ()
        classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
        probe = torch.zeros(1, 3, size, size)
        with torch.no_grad():
            out_dim = int(model(probe).shape[1])
        model.train()
        super().__init__(
            model,
            stem,
            stages,
            tail,
            head_prefixes=tuple(f"{c}." for c in classifier),
            out_dim=out_dim,
            size=size,
            mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
            std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
            in_channels=in_channels,
        )
        self.name = f"timm:{model_name}"
        self.model_name = model_name
        self.pretrained_cfg = cfg

    def weight_names(self) -> list[str]:
        """``DEFAULT``: the weights of the model name's tag (timm's default tag if none)."""
        return (
            ["DEFAULT"]
            if (self.pretrained_cfg.get("hf_hub_id") or self.pretrained_cfg.get("url"))
            else []
        )

    def load_named_weights(self, name: str, *, download: bool | None = None) -> None:
        """Load the tag's weights: Hugging Face cache first, torch hub cache for URL weights."""
        if name not in self.weight_names():
            raise UnknownWeightsError(
                f"unknown weights '{name}' for {self.name}; valid weight names: "
                f"{', '.join(self.weight_names()) or 'none'} (put a tag in the model name)"
            )
        hub_id = self.pretrained_cfg.get("hf_hub_id")
        if hub_id:
            path = _hf_weights_file(hub_id, download=download)
        else:
            path = cached_url_file(self.pretrained_cfg["url"], download=download, what=self.name)
        load_state_into(self, _read_weights(path), f"{self.name} ({path})")


def _hf_weights_file(repo_id: str, *, download: bool | None) -> Path:
    """timm's weights of ``repo_id`` from the Hugging Face cache, fetched there if allowed.

    A cached file stored under its sha256 (the hub's blob names) is hash checked.
    """
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cache = hf_cache_dir()
    for filename in _HF_FILES:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache)
        if isinstance(found, str):
            path = Path(found)
            blob = path.resolve().name
            if re.fullmatch(r"[0-9a-f]{64}", blob):
                check_hash(path, blob)
            return path
    reason = "downloads are off"
    if download_allowed(download):
        from huggingface_hub import errors

        absent = getattr(errors, "RemoteEntryNotFoundError", errors.EntryNotFoundError)
        for filename in _HF_FILES:
            try:
                return Path(hf_hub_download(repo_id, filename, cache_dir=cache))
            except errors.LocalEntryNotFoundError as err:  # offline: the next file fails too
                reason = "download failed: " + " ".join(str(err).split())[:200]
                break
            except absent:  # the repo has the other file
                reason = f"{repo_id} has none of {', '.join(_HF_FILES)}"
            except Exception as err:  # network and hub errors have many types
                reason = "download failed: " + " ".join(str(err).split())[:200]
                break
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    raise WeightsNotFoundError(
        f"{repo_id} weights ({_HF_FILES[0]}) are not in {cache} and could not be fetched "
        f"({reason}); put them in {folder} (e.g. `hf download {repo_id}` "
        "on a machine with network, then copy the cache)"
    )


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = load_weights_file(path)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state  # type: ignore[no-any-return]


@register_backbone_family("timm")
def timm_backbone(model_name: str, **kwargs: Any) -> TimmBackbone:
    """``timm:<model name>``."""
    return TimmBackbone(model_name, **kwargs)
