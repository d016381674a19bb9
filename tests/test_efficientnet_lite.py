"""EfficientNet-Lite0/1/2: architecture matches each checkpoint key for key, predictions on shipped photos."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from testbed.assets import asset_path
from testbed.errors import AssetError
from testbed.models.efficientnet_lite import (
    EFFICIENTNET_LITE0_MEAN,
    EFFICIENTNET_LITE0_STD,
    LITE0_STAGES,
    LITE_VARIANTS,
    EfficientNetLite,
    scaled_stages,
    SameConv2d,
    build_efficientnet_lite0,
    load_checkpoint,
)
from testbed.models.registry import NormalizedModel, get_entry, get_model
from testbed.photos import imagenet_view

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    net = NormalizedModel(build_efficientnet_lite0(), EFFICIENTNET_LITE0_MEAN, EFFICIENTNET_LITE0_STD, "lite0")
    return net.eval()


def test_every_checkpoint_key_maps_with_matching_shape():
    state = torch.load(asset_path("efficientnet_lite0"), map_location="cpu", weights_only=True)
    own = EfficientNetLite(LITE0_STAGES).state_dict()
    assert len(state) == 296
    assert set(state) == set(own)
    assert all(state[k].shape == own[k].shape for k in state)
    assert sum(v.numel() for k, v in own.items() if "running" not in k and "num_batches" not in k) == 4_652_008


def test_top1_on_chelsea_and_coffee(lite0):
    x = torch.cat([imagenet_view("chelsea"), imagenet_view("coffee")])
    with torch.no_grad():
        probs = lite0(x).softmax(dim=1)
    assert int(probs[0].argmax()) in CAT_CLASSES
    assert float(probs[0, list(CAT_CLASSES)].sum()) > 0.85
    assert int(probs[1].argmax()) == ESPRESSO
    assert float(probs[1, ESPRESSO]) > 0.9


@pytest.mark.parametrize("name,n_keys,n_params,size", [("efficientnet_lite1", 386, 5_416_680, 240),
                                                       ("efficientnet_lite2", 386, 6_092_072, 260)])
def test_scaled_variants_map_their_checkpoints_and_classify_at_their_size(name, n_keys, n_params, size):
    """Lite1 / Lite2: the stage tables scaled from Lite0's take every key of the shipped checkpoint, and the registry
    model reads the cat and the espresso at its own input size."""
    state = torch.load(asset_path(name), map_location="cpu", weights_only=True)
    own = EfficientNetLite(LITE_VARIANTS[name][0]).state_dict()
    assert len(state) == n_keys and set(state) == set(own)
    assert all(state[k].shape == own[k].shape for k in state)
    assert sum(v.numel() for k, v in own.items() if "running" not in k and "num_batches" not in k) == n_params
    assert get_entry(name).input_size == (size, size) == (LITE_VARIANTS[name][1],) * 2
    model = get_model(name, device="cpu")
    x = torch.cat([imagenet_view("chelsea", size), imagenet_view("coffee", size)])
    with torch.no_grad():
        probs = model(x).softmax(dim=1)
    assert int(probs[0].argmax()) in CAT_CLASSES and float(probs[0, list(CAT_CLASSES)].sum()) > 0.75
    assert int(probs[1].argmax()) == ESPRESSO


def test_scaling_rule_leaves_lite0_unchanged_and_rounds_channels_to_eight():
    assert scaled_stages(LITE0_STAGES, 1.0, 1.0) == LITE0_STAGES
    wide = scaled_stages(LITE0_STAGES, 1.1, 1.2)
    assert [s.out_ch for s in wide] == [16, 24, 48, 88, 120, 208, 352] and wide[0].in_ch == 32  # stem unscaled
    assert [s.repeats for s in wide] == [1, 3, 3, 4, 4, 5, 1]  # first and last stage unscaled


def test_same_padding_matches_tensorflow():
    conv = SameConv2d(3, 4, 3, stride=2)
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    # TF 'SAME' for 224 / stride 2 / k 3: total padding 1, all of it at the bottom/right.
    expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, stride=2)
    assert conv(x).shape == (1, 4, 112, 112)
    assert torch.allclose(conv(x), expected)


def test_any_input_size(lite0):
    with torch.no_grad():
        out = lite0(torch.rand(2, 3, 225, 190, generator=torch.Generator().manual_seed(1)))
    assert out.shape == (2, 1000) and torch.isfinite(out).all()


def test_mismatched_checkpoint_is_refused(tmp_path):
    state = torch.load(asset_path("efficientnet_lite0"), map_location="cpu", weights_only=True)
    del state["_fc.bias"]
    state["_fc.weight"] = state["_fc.weight"][:10]
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(AssetError, match=r"missing: \['_fc.bias'\].*shape mismatch: \['_fc.weight'\]"):
        load_checkpoint(EfficientNetLite(), path)


def test_missing_asset_names_file_and_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(AssetError, match=r"efficientnet-lite0-57934424\.pth.*testbed assets fetch"):
        build_efficientnet_lite0()


def test_resized_registry_model_at_the_papers_input_size():
    """``efficientnet_lite2@299``: the same weights at another square input, no accuracy claimed at that size; it
    still reads the cat and the espresso; names that cannot be resized are refused with one line."""
    from testbed.errors import ConfigError, ModelNotFoundError
    from testbed.models.registry import list_models

    base, entry = get_entry("efficientnet_lite2"), get_entry("efficientnet_lite2@299")
    assert entry.input_size == (299, 299) and entry.accuracy == () and base.accuracy
    assert (entry.mean, entry.std, entry.labels, entry.assets) == (base.mean, base.std, base.labels, base.assets)
    assert "efficientnet_lite2@299" not in list_models() and base.input_size == (260, 260)  # the registry is unchanged
    assert entry.summary()["input_size"] == [299, 299] and "not at this size" in entry.summary()["description"]
    model = get_model("efficientnet_lite2@299", device="cpu")
    x = torch.cat([imagenet_view("chelsea", 299), imagenet_view("coffee", 299)])
    with torch.no_grad():
        probs = model(x).softmax(dim=1)
    assert int(probs[0].argmax()) in CAT_CLASSES and int(probs[1].argmax()) == ESPRESSO
    with pytest.raises(ModelNotFoundError, match=r"unknown model 'nosuch@299'; known models: .*NAME@SIZE"):
        get_entry("nosuch@299")
    with pytest.raises(ConfigError, match=r"sign-cnn takes only its own input size"):
        get_entry("sign-cnn@64")
    with pytest.raises(ConfigError, match=r"input size 4096 outside \[32, 1024\]"):
        get_entry("efficientnet_lite0@4096")
