"""`hfxray data push`: the prepared sample as a Hub dataset repo (Parquet shards, card, manifest), read back by
`datasets.load_dataset` and by training as `--data-dir`.

No Hub server is reachable, so uploads run against fakes of `HfApi.create_repo` / `upload_folder` (which keep a
copy of the folder they are given), and the Hub-id path of training reads that copy through fakes of
`load_dataset` / `hf_hub_download`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

from hfxray.cli import main
from hfxray.data import MANIFEST_NAME, check_prepared, kept_counts, read_manifest

REPO_ID = "someone/coronahack-normal-virus"


def _push(*args: str) -> int:
    return main(["-q", "data", "push", *args])


@pytest.fixture(scope="module")
def local_repo(prepared_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dataset-repo") / "repo"
    assert _push("--data-dir", str(prepared_dir), "--repo-id", REPO_ID, "--local", str(out)) == 0
    return out


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_local_repo_loads_with_counts_labels_patient_groups_and_original_bytes(local_repo, prepared_dir):
    from datasets import load_dataset

    # force_redownload: datasets 5.2 would read any earlier folder of this name from its cache (docs/hub-data.md)
    dataset = load_dataset(str(local_repo), download_mode="force_redownload")
    rows = read_manifest(prepared_dir)
    counts = kept_counts(rows)
    assert sorted(dataset) == ["test", "train", "validation"]
    by_file = {row["file"]: row for row in rows if row["status"] == "kept"}
    for split, part in dataset.items():
        names = part.features["label"].names
        assert names == ["normal", "virus"]
        assert Counter(names[label] for label in part["label"]) == counts[split]
        assert [by_file[file]["patient_group"] for file in part["file"]] == part["patient_group"]
        assert {by_file[file]["split"] for file in part["file"]} == {split}
        assert [by_file[file]["source_file"] for file in part["file"]] == part["source_file"]
    # The images are the prepared files' own bytes, not re-encoded.
    raw = dataset["test"].cast_column("image", dataset["test"].features["image"].__class__(decode=False))
    for item in raw.select(range(5)):
        assert _sha(item["image"]["bytes"]) == _sha((prepared_dir / item["file"]).read_bytes())
    # No patient group is on two sides of the split.
    groups = {split: set(part["patient_group"]) for split, part in dataset.items()}
    assert not groups["train"] & groups["validation"]


def test_card_parses_with_license_task_counts_and_configs(local_repo, prepared_dir):
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(local_repo / "README.md")
    data = card.data.to_dict()
    assert data["task_categories"] == ["image-classification"]
    assert data["size_categories"] == ["n<1K"]
    # Kermany images are CC BY 4.0; the sample's Cohen-derived images have no licence without --cohen-metadata.
    assert set(data["license"]) == {"cc-by-4.0", "unknown"}
    assert [f["split"] for f in data["configs"][0]["data_files"]] == ["train", "validation", "test"]
    counts = kept_counts(read_manifest(prepared_dir))
    train = counts["train"]
    assert f"| train | {train['normal']} | {train['virus']} | {sum(train.values())} |" in card.text
    marker = json.loads((local_repo / "hfxray_dataset.json").read_text())
    unstated = marker["licenses"]["not stated"]
    assert unstated == sum(1 for row in read_manifest(prepared_dir) if row["status"] == "kept"
                           and row["label"] == "virus" and not row["source_file"].startswith("person"))
    assert f"{unstated} image(s) have no licence stated" in card.text
    for section in ("How patients were split", "Duplicates and exclusions", "Known biases and limitations",
                    "Citations", "Licences"):
        assert f"## {section}" in card.text
    assert "Paediatric, single site" in card.text and "from papers" in card.text
    assert (local_repo / MANIFEST_NAME).read_bytes() == (prepared_dir / MANIFEST_NAME).read_bytes()
    assert marker["published"] is False


def test_cohen_metadata_gives_cohen_images_their_own_licence(prepared_dir, cohen_dir):
    from hfxray.dataset_card import cohen_licenses, hub_license, row_license

    table = cohen_licenses(cohen_dir / "metadata.csv")
    kept = [row for row in read_manifest(prepared_dir) if row["status"] == "kept"]
    licences = {row["source_file"]: row_license(row, table) for row in kept}
    # SOURCES.md: the journal figures of patient 19 are CC BY-NC-ND, the SIRM case images state none.
    assert licences["1-s2.0-S0929664620300449-gr2_lrg-a.jpg"] == "CC BY-NC-ND"
    assert licences["39EE8E69-5801-48DE-B6E3-BE7D1BCF3092.jpeg"] == "not stated"
    assert licences["person1007_virus_1690.jpeg"] == "CC BY 4.0"
    assert row_license({"format": "kermany", "source_file": "any-name.jpeg"}, table) == "CC BY 4.0"
    assert hub_license("CC BY-NC-SA 4.0") == "cc-by-nc-sa-4.0" and hub_license("CC BY-NC-SA") == "other"


def _one_line_error(capsys, code: int, *fragments: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "To fix:" in err and len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_bad_input_is_one_line(tmp_path, prepared_dir, capsys, monkeypatch):
    (tmp_path / "empty").mkdir()
    _one_line_error(capsys, _push("--data-dir", str(tmp_path / "empty"), "--repo-id", REPO_ID, "--local",
                                  str(tmp_path / "out")), "not a prepared ImageFolder")
    for bad in ("no-owner", "a/b/c", "bad id/x y"):
        _one_line_error(capsys, _push("--data-dir", str(prepared_dir), "--repo-id", bad, "--local",
                                      str(tmp_path / "out")), "not a valid Hub repo id")
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me")
    _one_line_error(capsys, _push("--data-dir", str(prepared_dir), "--repo-id", REPO_ID, "--local", str(foreign)),
                    "is not a dataset repo written by `hfxray data push`")
    assert os.listdir(foreign) == ["mine.txt"]
    _one_line_error(capsys, _push("--data-dir", str(prepared_dir), "--repo-id", REPO_ID, "--local",
                                  str(prepared_dir / "repo")), "lies inside the --data-dir")
    assert not (tmp_path / "out").exists()

    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    _one_line_error(capsys, _push("--data-dir", str(prepared_dir), "--repo-id", REPO_ID), "no Hugging Face token")


def test_local_replaces_its_own_earlier_repo(prepared_dir, tmp_path, capsys):
    out = tmp_path / "repo"
    assert _push("--data-dir", str(prepared_dir), "--repo-id", REPO_ID, "--local", str(out)) == 0
    (out / "data" / "stale-00000-of-00001.parquet").write_bytes(b"old")
    assert _push("--data-dir", str(prepared_dir), "--repo-id", "someone/other", "--local", str(out)) == 0
    assert "written to" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        "test-00000-of-00001.parquet", "train-00000-of-00001.parquet", "validation-00000-of-00001.parquet"]
    assert json.loads((out / "hfxray_dataset.json").read_text())["repo_id"] == "someone/other"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging or retired folder left


@pytest.fixture(scope="module")
def pushed(prepared_dir, tmp_path_factory):
    """`hfxray data push --private` against fakes; returns (calls, the uploaded folder, the prepared copy)."""
    from huggingface_hub import HfApi, constants

    root = tmp_path_factory.mktemp("pushed")
    prepared = root / "prepared"
    # Its own folder (the push writes a record into it): images hard-linked, the manifest a copy of its own.
    shutil.copytree(prepared_dir, prepared, copy_function=os.link, ignore=shutil.ignore_patterns(MANIFEST_NAME))
    shutil.copyfile(prepared_dir / MANIFEST_NAME, prepared / MANIFEST_NAME)
    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = dict(kwargs, repo_id=repo_id)

    def upload_folder(self, **kwargs):
        calls["upload_folder"] = kwargs
        shutil.copytree(kwargs["folder_path"], root / "uploaded")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "HF_HUB_OFFLINE", False)
        patch.setenv("HF_HUB_OFFLINE", "0")
        patch.setenv("HF_TOKEN", "hf_FAKEtokenNEVERtoBEshown1234567890")
        patch.setattr(HfApi, "create_repo", create_repo)
        patch.setattr(HfApi, "upload_folder", upload_folder)
        assert _push("--data-dir", str(prepared), "--repo-id", REPO_ID, "--private") == 0
    return calls, root / "uploaded", prepared


def test_push_uploads_the_repo_privately_and_records_it(pushed):
    from hfxray.dataset_repo import dataset_repo_id

    calls, uploaded, prepared = pushed
    assert calls["create_repo"]["private"] is True and calls["create_repo"]["repo_type"] == "dataset"
    assert calls["upload_folder"]["repo_type"] == "dataset" and calls["upload_folder"]["repo_id"] == REPO_ID
    files = sorted(p.relative_to(uploaded).as_posix() for p in uploaded.rglob("*") if p.is_file())
    assert files == ["README.md", "data/test-00000-of-00001.parquet", "data/train-00000-of-00001.parquet",
                     "data/validation-00000-of-00001.parquet", "hfxray_dataset.json", "manifest.csv"]
    assert json.loads((uploaded / "hfxray_dataset.json").read_text())["published"] is True
    assert dataset_repo_id(prepared) == REPO_ID
    # A record of an earlier preparation is not believed once the manifest changes.
    original = (prepared / MANIFEST_NAME).read_bytes()
    (prepared / MANIFEST_NAME).write_bytes(original + b"\n")
    assert dataset_repo_id(prepared) is None
    (prepared / MANIFEST_NAME).write_bytes(original)


def _listing(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): _sha(p.read_bytes())
            for split in ("train", "validation", "test") for p in sorted((folder / split).rglob("*")) if p.is_file()}


def test_hub_id_as_data_dir_reads_back_the_same_prepared_folder(pushed, prepared_dir, tmp_path, monkeypatch):
    """The real `load_dataset(REPO_ID)` / `hf_hub_download` calls, answered from the uploaded copy."""
    import datasets
    import huggingface_hub

    from hfxray.dataset_repo import dataset_repo_id, resolve_data_dir

    _, uploaded, _ = pushed
    real_load = datasets.load_dataset
    asked = []

    def load_dataset(path, *args, **kwargs):
        asked.append(path)
        if path == REPO_ID:  # the Hub keys its cache on the repo's revision; a folder stands in for it here
            return real_load(str(uploaded), *args, download_mode="force_redownload", **kwargs)
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo_id, filename, repo_type=None, **_: str(uploaded / filename))
    folder = Path(resolve_data_dir(REPO_ID, tmp_path))
    assert asked == [REPO_ID]
    assert check_prepared(folder) == folder
    assert (folder / MANIFEST_NAME).read_bytes() == (prepared_dir / MANIFEST_NAME).read_bytes()
    assert _listing(folder) == _listing(prepared_dir)
    assert dataset_repo_id(folder) == REPO_ID  # read from the Hub: model cards name the dataset
    assert resolve_data_dir(REPO_ID, tmp_path) == str(folder)  # written once, then reused


def test_unreachable_or_foreign_dataset_ids_are_one_line(tmp_path, capsys):
    from hfxray.dataset_repo import DatasetRepoError, resolve_data_dir

    # Offline (the tests' HF_HUB_OFFLINE), a Hub id without a cached copy cannot load.
    with pytest.raises(DatasetRepoError, match="neither a prepared folder nor a dataset repo that loads") as info:
        resolve_data_dir("nobody/no-such-dataset", tmp_path)
    assert "To fix:" in str(info.value) and "\n" not in str(info.value)
    # A bare name is a folder: check_prepared's own message follows.
    assert resolve_data_dir("prepared-typo", tmp_path) == "prepared-typo"


@pytest.mark.slow
def test_training_from_the_local_repo_matches_the_prepared_folder(local_repo, prepared_dir, tiny_runs, tmp_path):
    """Same seed and flags as the `tiny_runs` vit run (trained on the prepared folder): same split, same groups,
    same metrics."""
    import yaml

    from hfxray.workflow import main as train_main

    out = tmp_path / "vit-from-repo"
    code = train_main(["--model", "vit", "--preset", "tiny", "--recipe", "scratch", "--data-dir", str(local_repo),
                       "--output-dir", str(out), "--num_train_epochs", "2", "--max_train_samples", "128",
                       "--logging_steps", "2", "--image_size", "64", "--resize_size", "72",
                       "--cache_dir", str(tmp_path / "cache")])
    assert code == 0
    args = yaml.safe_load((out / "args.yaml").read_text())
    reference = yaml.safe_load((tiny_runs["vit"] / "args.yaml").read_text())
    used = Path(args["data_dir"])
    assert used.is_relative_to(tmp_path / "cache")
    assert {k: args[k] for k in ("train_size", "validation_size", "test_size")} == {
        k: reference[k] for k in ("train_size", "validation_size", "test_size")}
    with (used / MANIFEST_NAME).open(newline="") as a, (prepared_dir / MANIFEST_NAME).open(newline="") as b:
        assert [(r["file"], r["split"], r["patient_group"]) for r in csv.DictReader(a)] == [
            (r["file"], r["split"], r["patient_group"]) for r in csv.DictReader(b)]
    results = json.loads((out / "test_results.json").read_text())
    expected = json.loads((tiny_runs["vit"] / "test_results.json").read_text())
    assert results["test_n"] == expected["test_n"] and results["test_n_positive"] == expected["test_n_positive"]
    for key in ("test_accuracy", "test_auroc", "test_ece"):
        assert results[key] == pytest.approx(expected[key], abs=1e-6), key
    # A --local copy names the repo it is meant for, but is not published: the model card cites no dataset.
    from huggingface_hub import ModelCard

    assert ModelCard.load(out / "README.md").data.datasets is None


def test_evaluate_reads_the_local_repo_as_data_dir(local_repo, tiny_runs, tmp_path, monkeypatch):
    from datasets import config

    monkeypatch.setattr(config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "evaluation.json"
    assert main(["-q", "evaluate", "--model", str(tiny_runs["vit"]), "--data-dir", str(local_repo), "--out",
                 str(out), "--n-resamples", "10"]) == 0
    report = json.loads(out.read_text())
    expected = json.loads((tiny_runs["vit"] / "test_results.json").read_text())
    assert report["n"] == expected["test_n"]
    assert report["accuracy"] == pytest.approx(expected["test_accuracy"], abs=1e-6)


def test_a_changed_repo_replaces_its_copy_and_a_damaged_one_is_refused(local_repo, tmp_path):
    from hfxray.dataset_repo import DatasetRepoError, resolve_data_dir

    repo = tmp_path / "repo"
    shutil.copytree(local_repo, repo)
    first = resolve_data_dir(str(repo), tmp_path / "cache")
    rows = list(csv.DictReader((repo / MANIFEST_NAME).open(newline="")))
    moved = next(row for row in rows if row["split"] == "train")
    moved["split"] = "validation"  # the manifest no longer agrees with the shards
    with (repo / MANIFEST_NAME).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(DatasetRepoError, match=r"disagrees with the repo's manifest.*To fix:"):
        resolve_data_dir(str(repo), tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache" / "hfxray-dataset-repos").iterdir()] == [Path(first).name]


def test_bit_hyperrule_reads_the_repo_as_it_reads_the_prepared_folder(local_repo, prepared_dir, tmp_path):
    """BiT-HyperRule's data-dependent settings are read before the full parse: the repo is resolved there too."""
    from hfxray.arguments import parse_args
    from hfxray.recipes import bit_hyperrule_steps

    def settings(data_dir):
        _, data, recipe, _, training = parse_args([
            "--model", "bit", "--preset", "full", "--recipe", "paper", "--data_dir", str(data_dir),
            "--output_dir", str(tmp_path / "run"), "--cache_dir", str(tmp_path / "cache")])
        return data.data_dir, (training.max_steps, recipe.lr_milestones, recipe.resize_size, recipe.image_size)

    used, from_repo = settings(local_repo)
    assert Path(used).is_relative_to(tmp_path / "cache")
    assert from_repo == settings(prepared_dir)[1]
    train = sum(kept_counts(read_manifest(prepared_dir))["train"].values())
    assert from_repo[0] == bit_hyperrule_steps(train)[2]


def test_upload_problems_are_one_line_without_the_token(prepared_dir, monkeypatch, capsys):
    from huggingface_hub import HfApi, constants

    token = "hf_FAKEtokenNEVERtoBEshown1234567890"
    _one_line_error(capsys, _push("--data-dir", str(prepared_dir), "--repo-id", REPO_ID),
                    "HF_HUB_OFFLINE", "--local")  # the tests' offline Hub

    def refuse(self, repo_id, **kwargs):
        raise RuntimeError(f"403 Forbidden for {repo_id} with Authorization: Bearer {token}")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setattr(HfApi, "create_repo", refuse)
    err = _one_line_error(capsys, _push("--data-dir", str(prepared_dir), "--repo-id", REPO_ID),
                          f"upload to the dataset repo {REPO_ID} failed")
    assert token not in err and "***" in err


def test_a_manifest_naming_a_file_outside_its_folder_is_refused(prepared_dir, tmp_path, capsys):
    prepared = tmp_path / "prepared"
    shutil.copytree(prepared_dir, prepared, copy_function=os.link, ignore=shutil.ignore_patterns(MANIFEST_NAME))
    rows = read_manifest(prepared_dir)
    kept = next(row for row in rows if row["status"] == "kept" and row["split"] == "test")
    kept["file"] = "test/normal/../../../outside.jpeg"
    with (prepared / MANIFEST_NAME).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _one_line_error(capsys, _push("--data-dir", str(prepared), "--repo-id", REPO_ID, "--local",
                                  str(tmp_path / "repo")), "outside their split/label folder")
    assert not (tmp_path / "repo").exists()


def test_two_local_repos_of_one_name_each_read_back_their_own_images(prepared_dir, tmp_path):
    """datasets 5.2 caches a folder with a `configs` card under the folder's name alone: a second repo folder of that
    name would be read from the first one's cache. resolve_data_dir names the shards, so each reads its own."""
    from hfxray.dataset_repo import resolve_data_dir

    first, second = tmp_path / "a" / "repo", tmp_path / "b" / "repo"
    assert _push("--data-dir", str(prepared_dir), "--repo-id", REPO_ID, "--local", str(first)) == 0
    changed = tmp_path / "changed"
    shutil.copytree(prepared_dir, changed, copy_function=os.link, ignore=shutil.ignore_patterns(MANIFEST_NAME))
    rows = read_manifest(prepared_dir)
    moved = next(r for r in rows if r["status"] == "kept" and r["split"] == "train")
    new_file = moved["file"].replace("train/", "validation/", 1)
    os.rename(changed / moved["file"], changed / new_file)
    moved.update(file=new_file, split="validation")
    with (changed / MANIFEST_NAME).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert _push("--data-dir", str(changed), "--repo-id", REPO_ID, "--local", str(second)) == 0
    for repo, source in ((first, prepared_dir), (second, changed)):
        folder = Path(resolve_data_dir(str(repo), tmp_path / "cache"))
        assert _listing(folder) == _listing(source)
