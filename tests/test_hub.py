"""Model card contents, the curated upload list and the fail-fast Hub access check.

No Hub server is reachable (and huggingface_hub 2.x has no local one), so pushes are exercised with fakes for
`HfApi.whoami` / `create_repo` / `upload_folder`; the fake upload applies huggingface_hub's own pattern filter to
the folder, so the test sees exactly the files `upload_folder` would send.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import yaml
from huggingface_hub import HfApi, ModelCard

from hfxray.cli import main
from hfxray.hub import HubError, check_hub_access, hub_files, prepare_push_to_hub, push_run, write_model_card

FAKE_TOKEN = "hf_FAKEtokenNEVERtoBEshown1234567890"
TEST_RESULTS = {
    "epoch": 1.0, "test_accuracy": 0.532608695652174, "test_auroc": 0.7286052009456264, "test_f1": 0.6504065040650406,
    "test_loss": 0.6789937019348145, "test_n": 92, "test_n_positive": 47, "test_precision": 0.5263157894736842,
    "test_sensitivity": 0.851063829787234, "test_specificity": 0.2,
}
MANIFEST = """file,label,split,patient_group,status,reason
train/normal/a.jpeg,normal,train,im0001,kept,
train/normal/b.jpeg,normal,train,im0002,kept,
train/normal/c.jpeg,normal,train,im0003,kept,
train/virus/d.jpeg,virus,train,person1,kept,
validation/virus/e.jpeg,virus,validation,person2,kept,
test/normal/f.jpeg,normal,test,im0009,kept,
test/virus/g.jpeg,virus,test,person3,kept,
,,,person4,skipped,excluded class: bacteria
"""


@pytest.fixture(scope="module")
def tiny_vit(tiny_models) -> Path:
    return tiny_models / "vit"


def make_run(tiny_vit: Path, tmp_path: Path, preset: str = "full", results: dict | None = TEST_RESULTS) -> Path:
    """A run folder as `hfxray train` leaves it, with args.yaml pointing at a prepared folder's manifest."""
    run = tmp_path / "run"
    shutil.copytree(tiny_vit, run)
    data_dir = tmp_path / "prepared"
    data_dir.mkdir()
    (data_dir / "manifest.csv").write_text(MANIFEST)
    args = dict(model="vit", preset=preset, model_tag=f"vit.{preset}", recipe="seed", optim="sgd",
                optim_args="momentum=0.9,nesterov=True", learning_rate=0.01, weight_decay=1e-4, schedule="trainer",
                lr_scheduler_type="constant_with_warmup", warmup_steps=0.3, num_train_epochs=10.0, max_steps=-1,
                per_device_train_batch_size=32, world_size=1,
                gradient_accumulation_steps=1, label_smoothing_factor=0.1, image_size=64, resize_size=None, max_zoom=1.0,
                hflip=False, max_grad_norm=0.0, seed=42, data_dir=str(data_dir), train_size=4, validation_size=1,
                test_size=2, hub_token="<HUB_TOKEN>",
                pretrained_checkpoint="google/vit-base-patch16-224-in21k" if preset == "full" else None)
    (run / "args.yaml").write_text(yaml.safe_dump(args))
    (run / "train_results.json").write_text(json.dumps({"global_step": 140, "train_loss": 0.5}))
    if results is not None:
        (run / "test_results.json").write_text(json.dumps(results))
    return run


def test_card_metadata_model_index_and_sections(tiny_vit, tmp_path):
    run = make_run(tiny_vit, tmp_path)
    path = write_model_card(run, repo_id="someone/xray-vit")

    card = ModelCard.load(path)
    meta = card.data.to_dict()
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "image-classification"
    assert meta["base_model"] == "google/vit-base-patch16-224-in21k"
    assert meta["license"] == "other" and meta["license_name"]
    assert {"medical-imaging", "chest-x-ray", "vit"} <= set(meta["tags"])
    assert "datasets" not in meta  # CoronaHack is a Kaggle dataset, not a Hub dataset id
    [entry] = meta["model-index"]
    [result] = entry["results"]
    assert result["task"]["type"] == "image-classification" and result["dataset"]["split"] == "test"
    metrics = {m["type"]: m["value"] for m in result["metrics"]}
    assert metrics == {"accuracy": TEST_RESULTS["test_accuracy"], "roc_auc": TEST_RESULTS["test_auroc"],
                       "recall": TEST_RESULTS["test_sensitivity"], "specificity": TEST_RESULTS["test_specificity"],
                       "f1": TEST_RESULTS["test_f1"]}

    text = card.text
    sections = _sections(text)
    assert {"Intended use", "How to use", "Training recipe", "Data and the patient-level split", "Evaluation",
            "Limitations"} <= set(sections)
    # The usage snippet runs as written against the repo id.
    assert 'pipeline("image-classification", model="someone/xray-vit")' in sections["How to use"]
    # Numbers come from the run's files: args.yaml, the manifest, test_results.json.
    recipe = _table_rows(sections["Training recipe"])
    assert recipe["learning rate"] == ["0.01"] and recipe["label smoothing"] == ["0.1"]
    assert "0.9" in recipe["optimizer"][0] and "64" in recipe["image size"][0]
    assert _table_rows(sections["Data and the patient-level split"]) == {
        "train": ["3", "1", "4"], "validation": ["0", "1", "1"], "test": ["1", "1", "2"]}
    evaluation = _table_rows(sections["Evaluation"])
    assert float(evaluation["Accuracy"][0]) == pytest.approx(TEST_RESULTS["test_accuracy"], abs=5e-5)
    assert "92" in sections["Limitations"]  # the test-set size the limitations warn about
    assert len(sections["Limitations"].splitlines()) >= 4


def _sections(text: str) -> dict[str, str]:
    """Markdown `## Heading` -> its body."""
    parts = text.split("\n## ")
    return {part.split("\n", 1)[0].strip(): part.split("\n", 1)[-1] for part in parts[1:]}


def _table_rows(markdown: str) -> dict[str, list[str]]:
    """First column -> the other cells, for every table row of a section (header and rule rows skipped)."""
    rows, block = {}, []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            block.append([cell.strip() for cell in line.strip().strip("|").split("|")])
            continue
        for cells in block[2:]:  # a table's first two lines are its header and its rule
            rows[cells[0]] = cells[1:]
        block = []
    return rows


def test_card_eval_results_round_trip_and_name_the_pushed_dataset(tiny_vit, tmp_path):
    """Every card metric is an EvalResult that ModelCard.load gives back; once the prepared folder was pushed as a
    Hub dataset (its record), the card's `datasets` and each result's dataset are that repo."""
    from hfxray.dataset_repo import write_record

    results = {**TEST_RESULTS, "test_ece": 0.0412}
    run = make_run(tiny_vit, tmp_path, results=results)
    loaded = ModelCard.load(write_model_card(run, repo_id="someone/xray-vit")).data
    assert {r.metric_type: r.metric_value for r in loaded.eval_results} == {
        "accuracy": results["test_accuracy"], "roc_auc": results["test_auroc"], "recall": results["test_sensitivity"],
        "specificity": results["test_specificity"], "f1": results["test_f1"], "expected_calibration_error": 0.0412}
    assert {(r.task_type, r.dataset_type, r.dataset_split) for r in loaded.eval_results} == {
        ("image-classification", "imagefolder", "test")}
    assert loaded.datasets is None

    data_dir = Path(yaml.safe_load((run / "args.yaml").read_text())["data_dir"])
    write_record(data_dir, "someone/coronahack-normal-virus")
    card = ModelCard.load(write_model_card(run, repo_id="someone/xray-vit"))
    assert card.data.datasets == ["someone/coronahack-normal-virus"]
    assert {(r.dataset_type, r.dataset_name) for r in card.data.eval_results} == {
        ("someone/coronahack-normal-virus", "someone/coronahack-normal-virus")}
    assert len(card.data.eval_results) == 6
    assert "https://huggingface.co/datasets/someone/coronahack-normal-virus" in card.text
    # The card's text is unchanged otherwise: the same sections, the evaluation table with its intervals.
    assert {"Intended use", "Evaluation", "Limitations"} <= set(_sections(card.text))


def test_card_for_random_init_omits_base_model_and_missing_metrics(tiny_vit, tmp_path):
    results = {**TEST_RESULTS, "test_auroc": math.nan}
    del results["test_f1"]
    run = make_run(tiny_vit, tmp_path, preset="tiny", results=results)
    meta = ModelCard.load(write_model_card(run)).data.to_dict()
    assert "base_model" not in meta
    metric_types = {m["type"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metric_types == {"accuracy", "recall", "specificity"}
    assert "random initialisation" in (run / "README.md").read_text()


def test_card_without_test_results_has_no_model_index(tiny_vit, tmp_path):
    run = make_run(tiny_vit, tmp_path, results=None)
    meta = ModelCard.load(write_model_card(run)).data.to_dict()
    assert "model-index" not in meta
    assert "was not evaluated" in (run / "README.md").read_text()


@pytest.fixture
def online_with_fake_token(monkeypatch):
    """Hub 'reachable' through fakes: offline mode off, a fake token in HF_TOKEN, whoami answering."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setattr(HfApi, "whoami", lambda self, token=None, **_: {
        "name": "tester", "auth": {"accessToken": {"role": "write"}}})


def test_push_uploads_exactly_the_hub_files(tiny_vit, tmp_path, monkeypatch, online_with_fake_token, capsys):
    """Fakes stand in for the Hub: no local Hub server exists for huggingface_hub 2.x."""
    from huggingface_hub.hf_api import DEFAULT_IGNORE_PATTERNS
    from huggingface_hub.utils import filter_repo_objects

    run = make_run(tiny_vit, tmp_path)
    for junk in ("checkpoint-14/model.safetensors", "checkpoint-14/optimizer.pt", "runs/Nov25/events.out.tfevents.1",
                 "training_args.bin", "trainer_state.json", "extra.pkl", "checkpoint-14/figure.png"):
        (run / junk).parent.mkdir(parents=True, exist_ok=True)
        (run / junk).write_bytes(b"x")
    (run / "all_results.json").write_text("{}")
    (run / "calibration.json").write_text("{}")
    (run / "test_reliability.png").write_bytes(b"png")
    # Explanation output a user put in the run folder (as an earlier summary suggested): patients' X-rays.
    for overlay in ("maps/gradcam/test/virus/person1_overlay.png", "maps/summary.csv", "overlay.png",
                    "maps/explain_results.json", "maps/val_reliability.png"):
        (run / overlay).parent.mkdir(parents=True, exist_ok=True)
        (run / overlay).write_bytes(b"png")
    (run / "linked_results.json").symlink_to(run / "maps" / "explain_results.json")
    calls = {}

    def fake_create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = dict(repo_id=repo_id, **kwargs)

    def fake_upload_folder(self, *, repo_id, folder_path, allow_patterns=None, ignore_patterns=None, **kwargs):
        listing = [p.relative_to(folder_path).as_posix() for p in sorted(Path(folder_path).rglob("*")) if p.is_file()]
        calls["uploaded"] = sorted(filter_repo_objects(listing, allow_patterns=allow_patterns,
                                                       ignore_patterns=list(ignore_patterns) + DEFAULT_IGNORE_PATTERNS))
        calls["upload_token"] = kwargs.get("token")

    monkeypatch.setattr(HfApi, "create_repo", fake_create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", fake_upload_folder)

    assert main(["push", str(run), "someone/xray-vit", "--private"]) == 0

    expected = ["README.md", "all_results.json", "args.yaml", "calibration.json", "config.json", "model.safetensors",
                "preprocessor_config.json", "test_reliability.png", "test_results.json", "train_results.json"]
    assert calls["uploaded"] == expected == hub_files(run)
    assert calls["create_repo"]["repo_id"] == "someone/xray-vit"
    assert calls["create_repo"]["exist_ok"] is True and calls["create_repo"]["private"] is True
    assert calls["upload_token"] == FAKE_TOKEN  # handed to the client, never shown
    output = capsys.readouterr()
    # The list is printed before the upload, and names every file that goes up.
    listing = output.out.splitlines()[0]
    assert listing.startswith("uploading 10 files to https://huggingface.co/someone/xray-vit: README.md, ")
    assert all(name in listing for name in expected) and "overlay" not in listing and "stay local" in listing
    assert "pushed 10 files" in output.out and FAKE_TOKEN not in output.out + output.err
    card = (run / "README.md").read_text()
    assert "![test_reliability](test_reliability.png)" in card
    assert "overlay" not in card and "maps/" not in card  # the card never embeds explanation figures


def test_push_dry_run_lists_without_uploading(tiny_vit, tmp_path, monkeypatch, capsys):
    run = make_run(tiny_vit, tmp_path)
    (run / "maps").mkdir()
    (run / "maps" / "person1_overlay.png").write_bytes(b"png")

    def refuse(*args, **kwargs):
        raise AssertionError("a dry run must not reach the Hub")

    for method in ("whoami", "create_repo", "upload_folder"):
        monkeypatch.setattr(HfApi, method, refuse)
    assert main(["push", str(run), "someone/xray-vit", "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("would upload 7 files to https://huggingface.co/someone/xray-vit: README.md, args.yaml, "
                          "config.json, model.safetensors, preprocessor_config.json, test_results.json, "
                          "train_results.json (")
    assert "overlay" not in out and not (run / "README.md").exists()  # nothing written either
    assert main(["push", str(tmp_path / "missing"), "someone/xray-vit", "--dry_run"]) == 2


def test_run_summary_suggests_maps_outside_the_run_folder(tmp_path):
    from hfxray.workflow import summary

    run = tmp_path / "runs" / "vit-seed"
    text = summary(run, tmp_path / "prepared", {"n": 2, "family": "vit"})
    [explain] = [line for line in text.splitlines() if "hfxray explain" in line]
    out = Path(explain.split("--out ")[1].split()[0])
    assert out == tmp_path / "runs" / "vit-seed-maps" and run not in out.parents


def _assert_token_nowhere(text: str, folder: Path) -> None:
    assert FAKE_TOKEN not in text
    for path in folder.rglob("*"):
        if path.is_file():
            assert FAKE_TOKEN.encode() not in path.read_bytes(), path


def test_push_offline_fails_clearly_without_showing_the_token(tiny_vit, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    run = make_run(tiny_vit, tmp_path)
    assert main(["push", str(run), "someone/xray-vit"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: cannot push to the Hub: the Hugging Face Hub is switched off")
    assert "To fix" in captured.err and "Traceback" not in captured.err
    _assert_token_nowhere(captured.out + captured.err, run)


def test_no_token_is_a_clear_error(monkeypatch, online_with_fake_token):
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(HubError, match="no Hugging Face token found. To fix: run `hf auth login`"):
        check_hub_access()


def test_unreachable_hub_error_masks_the_token(monkeypatch, online_with_fake_token):
    def refuse(self, token=None, **_):
        raise ConnectionError(f"connection refused while sending Authorization: Bearer {token}")

    monkeypatch.setattr(HfApi, "whoami", refuse)
    with pytest.raises(HubError) as caught:
        check_hub_access()
    message = str(caught.value)
    assert "cannot reach the Hugging Face Hub" in message and "To fix" in message and "***" in message
    assert FAKE_TOKEN not in message


def test_prepare_push_to_hub_checks_first_and_names_the_repo(monkeypatch, online_with_fake_token, tmp_path):
    from types import SimpleNamespace

    args = SimpleNamespace(push_to_hub=False, hub_token=None, hub_model_id=None, output_dir=str(tmp_path / "vit-run"))
    assert prepare_push_to_hub(args) is None
    args.push_to_hub = True
    assert prepare_push_to_hub(args) == "tester/vit-run"
    args.hub_model_id = "my-org/xray"
    assert prepare_push_to_hub(args) == "my-org/xray"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the check runs before any training and stops it
    with pytest.raises(HubError, match="switched off"):
        prepare_push_to_hub(args)


def test_push_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(HubError, match="not a finished run folder .* To fix"):
        push_run(tmp_path, "someone/xray")


def test_the_card_a_run_writes_from_memory_equals_the_card_read_back_from_its_folder(tiny_runs):
    """`train` hands the card what it holds in memory (`CardFacts`); `push` and older runs read the same facts
    from the run folder: both must state the same card, byte for byte."""
    run = tiny_runs["vit"]
    written = (run / "README.md").read_bytes()
    try:
        assert write_model_card(run).read_bytes() == written
    finally:
        (run / "README.md").write_bytes(written)


def test_a_square_resize_run_says_so_in_its_card_read_from_memory_or_disk_alike(square_run):
    written = (square_run / "README.md").read_bytes()
    try:
        assert write_model_card(square_run).read_bytes() == written
    finally:
        (square_run / "README.md").write_bytes(written)
    assert ("| image size | resized to 72 x 72 px (aspect not kept), center crop 64 x 64 px, scaled to [-1, 1] |"
            in written.decode())
