"""hfxray.models: a model folder is data, never a program; damaged or unsafe folders end in one clear line."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
import torch

from hfxray.cli import main as cli_main
from hfxray.families import ADAPTERS, adapter_for, model_family
from hfxray.models import ModelLoadError, check_model_folder, create_model, load_trained


@pytest.fixture(scope="module")
def saved_vit(tiny_models):
    return tiny_models / "vit"


def copy_of(folder, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(folder, target)
    return target


def test_a_saved_model_loads(saved_vit):
    model, processor = load_trained(str(saved_vit))
    assert model_family(model) == "vit" and processor.crop_size["height"] == 64


def test_a_folder_asking_for_its_own_code_is_refused_and_the_code_never_runs(saved_vit, tmp_path):
    folder = copy_of(saved_vit, tmp_path)
    marker = tmp_path / "code_ran"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\nfrom transformers import ViTConfig\n"
                                    "class EvilConfig(ViTConfig):\n    pass\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForImageClassification": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="auto_map.*never does"):
        load_trained(str(folder))
    from PIL import Image

    Image.new("L", (80, 80), 128).save(tmp_path / "x.png")
    assert cli_main(["predict", "--model", str(folder), str(tmp_path / "x.png")]) == 2
    assert not marker.exists()


def test_pickle_only_weights_are_refused_with_how_to_convert(saved_vit, tmp_path):
    folder = copy_of(saved_vit, tmp_path)
    model, _ = load_trained(str(saved_vit))
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="pickle.*safe_serialization=True"):
        load_trained(str(folder))


def test_a_truncated_safetensors_file_is_one_line(saved_vit, tmp_path, capsys):
    folder = copy_of(saved_vit, tmp_path)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    from PIL import Image

    Image.new("L", (80, 80), 128).save(tmp_path / "x.png")
    assert cli_main(["predict", "--model", str(folder), str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "To fix" in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


@pytest.mark.parametrize("problem", ["missing", "file", "no config", "bad json"])
def test_path_like_names_that_are_not_models_say_what_is_wrong(problem, saved_vit, tmp_path):
    target = tmp_path / "runs" / "nope"
    if problem == "file":
        target.parent.mkdir(parents=True)
        target.write_text("x")
    elif problem == "no config":
        target.mkdir(parents=True)
    elif problem == "bad json":
        shutil.copytree(saved_vit, target)
        (target / "config.json").write_text("{not json")
    expected = {"missing": "no such folder", "file": "not a folder", "no config": "no config.json",
                "bad json": "not valid JSON"}[problem]
    with pytest.raises(ModelLoadError, match=expected):
        check_model_folder(str(target))
    assert check_model_folder("owner/name") is None  # a Hub id is not checked on disk


@pytest.mark.parametrize("kind", ["vit", "bit", "hybrid"])
def test_each_family_has_one_adapter_that_finds_its_parts(kind):
    model, _, _ = create_model(kind, "tiny")
    adapter = adapter_for(model)
    assert adapter is ADAPTERS[kind]
    head = adapter.checked_head(model)
    with torch.no_grad():
        logits = model(pixel_values=torch.zeros(1, 3, 64, 64)).logits
    assert head.out_features == logits.shape[-1] == 2
    layer = adapter.gradcam_layer(model)
    assert isinstance(layer.module, torch.nn.Module) and layer.module in set(model.modules())
    assert (adapter.attention is None) == (kind == "bit")


def test_cli_modules_do_not_import_torch_for_help():
    import subprocess

    code = "import sys, hfxray.cli as c; c.main(['--help']) if False else None; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False"


def test_a_typo_of_a_run_folder_is_no_such_folder_not_a_hub_id(tmp_path, monkeypatch, capsys):
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match="runs/nope: no such folder"):
        check_model_folder("runs/nope")
    assert check_model_folder("owner/name") is None  # no folder `owner` here: a Hub id


# --- --config_overrides: the architecture of a from-scratch preset --------------------------------------------

def test_config_overrides_parse_lists_numbers_and_text():
    from hfxray.models import parse_config_overrides

    assert parse_config_overrides("hidden_sizes=[8, 16, 32, 64],depths=[2,1,1,1],layer_type=bottleneck,x=0.5") == {
        "hidden_sizes": [8, 16, 32, 64], "depths": [2, 1, 1, 1], "layer_type": "bottleneck", "x": 0.5}
    assert parse_config_overrides(None) == parse_config_overrides("  ") == {}
    assert parse_config_overrides("qkv_bias=False,x=None,y=true") == {"qkv_bias": False, "x": None, "y": True}


@pytest.mark.parametrize("kind, overrides, check", [
    ("bit", "depths=[2,1,1,1]", lambda m: m.config.depths == [2, 1, 1, 1]),
    ("bit", "hidden_sizes=[16,32,64,128]", lambda m: m.config.hidden_sizes == [16, 32, 64, 128]),
    ("vit", "hidden_size=48,intermediate_size=96", lambda m: m.config.hidden_size == 48),
    ("hybrid", "embed_dim=48,depth=3", lambda m: len(m.timm_model.blocks) == 3 and m.timm_model.embed_dim == 48),
])
def test_config_overrides_build_save_and_reload_the_changed_architecture(tmp_path, kind, overrides, check):
    model, processor, _ = create_model(kind, "tiny", config_overrides=overrides)
    plain, _, _ = create_model(kind, "tiny")
    assert check(model) and not check(plain)
    assert sum(p.numel() for p in model.parameters()) != sum(p.numel() for p in plain.parameters())
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded, _ = load_trained(str(tmp_path))  # config.json carries the overrides: pipeline needs no flag
    assert check(reloaded)
    pixels = torch.zeros(1, 3, 64, 64)
    model.eval(), reloaded.eval()
    assert torch.allclose(model(pixel_values=pixels).logits, reloaded(pixel_values=pixels).logits)


@pytest.mark.parametrize("kind, preset, overrides, message", [
    ("bit", "tiny", "depth=[2]", "depth not a field of BitConfig.*To fix: .*depths"),
    ("vit", "tiny", "hidden_sise=48", "hidden_sise not a field of ViTConfig.*To fix"),
    ("bit", "tiny", "hidden_sizes=[1,2]", "cannot build bit.tiny.*To fix"),
    ("hybrid", "tiny", "bogus=1", "cannot build hybrid.tiny.*bogus.*To fix"),
    ("vit", "full", "hidden_size=48", "pretrained weights.*To fix: use --preset small or tiny"),
    ("bit", "tiny", "depths", "is not KEY=VALUE.*To fix"),
    ("bit", "tiny", "layer_type=Bottleneck", "cannot build bit.tiny.*To fix"),  # transformers' config validation
    ("vit", "tiny", "image_size=128", "image_size: the input size follows the recipe.*To fix: use --image_size"),
    ("hybrid", "tiny", "img_size=128", "img_size: .*To fix: use --image_size"),
    ("bit", "tiny", "num_channels=1", "num_channels: the processor feeds 3-channel images. To fix"),
    ("vit", "tiny", "problem_type=multi_label_classification", "problem_type: .*fixed by hfxray. To fix"),
])
def test_config_overrides_that_cannot_apply_say_how_to_fix(kind, preset, overrides, message):
    from hfxray.models import ModelSpecError

    with pytest.raises(ModelSpecError, match=message):
        create_model(kind, preset, config_overrides=overrides)


def test_a_checkpoint_neither_local_nor_reachable_names_the_flag_to_pass_a_download(tmp_path):
    from hfxray.models import ModelLoadError, create_model

    with pytest.raises(ModelLoadError) as caught:  # the suite runs with HF_HUB_OFFLINE=1
        create_model("vit", "full")
    message = str(caught.value)
    assert "HF_HUB_OFFLINE is set" in message and "--checkpoint DIR" in message and "--local-dir" in message


@given(st.lists(st.text(alphabet="abcdefgh ", min_size=1, max_size=12), min_size=1, max_size=60).map(". ".join))
def test_an_excerpt_of_a_library_message_is_short_and_ends_at_a_word(text):
    from hfxray.errors import excerpt, one_line

    short = excerpt(text, 80)
    flat = one_line(text)
    assert len(short) <= 84
    if short == flat:
        return
    body = short.removesuffix(" ...")
    assert flat.startswith(body) and (len(body) == len(flat) or flat[len(body)] == " " or body.endswith("."))


@pytest.mark.parametrize("kind", sorted(ADAPTERS))
def test_a_full_preset_checkpoint_trains_and_reloads_at_another_input_size(kind, tmp_path):
    """The study fine-tunes at 128 px models published at 224: every family's full preset, loaded from a local
    checkpoint saved at one size and asked for another, takes the new size before and after a save and reload."""
    from transformers import AutoModelForImageClassification

    torch.manual_seed(0)
    small, processor, _ = create_model(kind, "tiny", image_size=64)
    small.save_pretrained(tmp_path / "checkpoint")
    processor.save_pretrained(tmp_path / "checkpoint")
    model, processor, spec = create_model(kind, "full", image_size=96, checkpoint=str(tmp_path / "checkpoint"))
    assert spec.image_size == 96 and processor.crop_size["height"] == 96
    pixels = torch.randn(2, 3, 96, 96)
    model.train()
    loss = torch.nn.functional.cross_entropy(model(pixel_values=pixels).logits, torch.tensor([0, 1]))
    loss.backward()
    model.save_pretrained(tmp_path / "run")
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "run").eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=pixels).logits, model(pixel_values=pixels).logits)


def test_a_square_processor_squashes_every_image_and_reloads_as_saved(tmp_path):
    """transformers 5.24's BitImageProcessor resizes a {"height", "width"} size to exactly that, whatever the
    aspect: a 90 x 40 image is squashed to 72 x 72 (with the shortest edge it would become 162 x 72)."""
    from PIL import Image
    from transformers import AutoImageProcessor

    from hfxray.models import ModelSpecError, build_processor

    image = Image.fromarray(torch.arange(90 * 40, dtype=torch.int32).reshape(40, 90).remainder(256).byte().numpy())
    plain = dict(do_center_crop=False, do_normalize=False, do_rescale=False, return_tensors="pt")
    square = build_processor(64, 72, resize_mode="square")
    assert dict(square.size) == {"height": 72, "width": 72} and dict(square.crop_size) == {"height": 64, "width": 64}
    assert square(image, **plain)["pixel_values"].shape == (1, 3, 72, 72)
    assert build_processor(64, 72)(image, **plain)["pixel_values"].shape == (1, 3, 72, 162)
    square.save_pretrained(tmp_path)
    again = AutoImageProcessor.from_pretrained(tmp_path)
    assert dict(again.size) == {"height": 72, "width": 72}
    assert torch.equal(again(image, return_tensors="pt")["pixel_values"],
                       square(image, return_tensors="pt")["pixel_values"])
    _, processor, _ = create_model("bit", "tiny", resize_size=72, resize_mode="square")
    assert dict(processor.size) == {"height": 72, "width": 72}
    with pytest.raises(ModelSpecError, match="To fix: use one of shortest_edge, square"):
        build_processor(64, 72, resize_mode="squash")
