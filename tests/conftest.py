"""Shared fixtures: the real CoronaHack sample (skipped with a reason when absent) and an offline Hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Offline for every test: otherwise a Hub lookup retries for 20-50 s before failing.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    """Under pytest-xdist, each worker gets its share of the cores for torch: with every worker at torch's default
    (all cores), N workers run N x N threads on N cores and each training step waits on the others."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // workers))


def _real_sample(name: str, find, expected, variable: str) -> Path:
    found = find()
    if found is None:
        pytest.skip(f"real {name} sample not found at {expected()} (set {variable})")
    return found


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The read-only real sample (721 X-rays, Kaggle layout)."""
    from hfxray import env

    return _real_sample("CoronaHack", env.sample_dir, env.expected_sample_dir, "HFXRAY_SAMPLE_DIR")


@pytest.fixture(scope="session")
def cohen_dir() -> Path:
    """The read-only real Cohen sample (124 rows, `metadata.csv` + `images/`)."""
    from hfxray import env

    return _real_sample("Cohen", env.cohen_dir, env.expected_cohen_dir, "HFXRAY_COHEN_DIR")


@pytest.fixture(scope="session")
def prepared_dir(sample_dir, tmp_path_factory) -> Path:
    """The sample prepared once per session as a binary ImageFolder (hard links into a temp dir)."""
    from hfxray.data import prepare

    out = tmp_path_factory.mktemp("prepared") / "coronahack"
    prepare(sample_dir, out, echo=lambda *_: None, progress=lambda items, **_: items)
    return out


@pytest.fixture(scope="session")
def tiny_runs(prepared_dir, tmp_path_factory) -> dict[str, Path]:
    """Two tiny models trained briefly on the real sample (shared by evaluation, report, hub tests)."""
    from hfxray.arguments import build_config
    from hfxray.workflow import execute

    runs = {}
    for kind in ("vit", "bit"):
        out = tmp_path_factory.mktemp("runs") / kind
        execute(build_config(model=kind, preset="tiny", recipe="scratch", data_dir=prepared_dir, output_dir=out,
                                num_train_epochs=2, max_train_samples=128, logging_steps=2, image_size=64,
                                resize_size=72))
        runs[kind] = out
    return runs


@pytest.fixture(scope="session")
def square_run(prepared_dir, tmp_path_factory) -> Path:
    """A tiny BiT trained briefly on the real sample with `--resize_mode square` (every image resized to 72 x 72,
    aspect not kept, then the 64 px center crop), saved as `hfxray train` saves it."""
    from hfxray.arguments import build_config
    from hfxray.workflow import execute

    out = tmp_path_factory.mktemp("runs") / "square"
    execute(build_config(model="bit", preset="tiny", recipe="scratch", data_dir=prepared_dir, output_dir=out,
                         num_train_epochs=2, max_train_samples=64, logging_steps=2, image_size=64, resize_size=72,
                         resize_mode="square", disable_tqdm=True))
    return out


@pytest.fixture
def fake_prepared(tmp_path) -> Path:
    """A folder that passes the prepared-folder check without images (for argument and schedule tests)."""
    for split in ("train", "test"):
        (tmp_path / "prep" / split).mkdir(parents=True)
    (tmp_path / "prep" / "manifest.csv").write_text("file\n")
    return tmp_path / "prep"


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of tiny models: with more, OpenMP threads contend for the cores whenever
    another process is busy (a tiny training step went from 0.007 s to 0.2 s), and tiny models gain nothing."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """`vit/`, `bit/` and `hybrid/`: tiny random models saved as `hfxray train` saves them (weights, config,
    processor), seeded; tests copy a folder before changing it."""
    import torch

    from hfxray.models import create_model

    root = tmp_path_factory.mktemp("tiny-models")
    torch.manual_seed(0)
    for kind in ("vit", "bit", "hybrid"):
        model, processor, _ = create_model(kind, "tiny")
        model.save_pretrained(root / kind)
        processor.save_pretrained(root / kind)
    return root


# kind -> (preset, epochs) of `real_runs`: the scratch recipe's one-cycle schedule, shortened. ViT's small preset
# trained as slowly as the hybrid's (70 s for 6 epochs) and reached 0.75; its tiny preset (2 blocks of width 32,
# same 16 px patches) runs a whole schedule in less time and is the kind ViT's maps are checked on.
REAL_TRAINING = {"vit": ("tiny", 24), "bit": ("small", 6), "hybrid": ("small", 6)}


@pytest.fixture(scope="session")
def real_runs(prepared_dir, tmp_path_factory):
    """kind -> trained scratch run folder (a short version of the README's from-scratch command), trained on first
    use so that each kind's checks run as soon as its own model exists."""
    return _scratch_runs(prepared_dir, lambda kind: tmp_path_factory.mktemp("real-runs") / kind)


def _scratch_runs(data_dir, out_dir):
    """kind -> run folder `out_dir(kind)`, trained on first use with the short scratch recipe of REAL_TRAINING."""
    from hfxray.arguments import build_config
    from hfxray.workflow import execute

    runs = {}

    def get(kind: str):
        if kind not in runs:
            preset, epochs = REAL_TRAINING[kind]
            out = out_dir(kind)
            execute(build_config(model=kind, preset=preset, recipe="scratch", data_dir=data_dir, output_dir=out,
                                 num_train_epochs=epochs, average_last_epochs=2, image_size=128, resize_size=144,
                                 disable_tqdm=True))
            runs[kind] = out
        return runs[kind]

    return get


@pytest.fixture(scope="session")
def permuted_runs(prepared_dir, tmp_path_factory):
    """kind -> a run trained exactly as `real_runs` trains it, on a copy of the sample whose train and validation
    images are shuffled between normal/ and virus/ (class counts kept; test/ untouched): the permuted-label model of
    data randomisation (Adebayo et al. 2018), as docs/explanations.md tells users to make one."""
    import os
    import random
    import shutil

    root = tmp_path_factory.mktemp("permuted")
    data = root / "prepared"
    shutil.copytree(prepared_dir, data, copy_function=os.link)
    rng = random.Random(0)
    for split in ("train", "validation"):
        files = sorted((data / split).glob("*/*"))
        labels = [path.parent.name for path in files]
        rng.shuffle(labels)
        moved = [(path, data / split / label / f"{path.parent.name}-{path.name}") for path, label in zip(files, labels)]
        for path, target in moved:
            assert not target.exists(), target  # rename would replace it
            path.rename(target)
    # manifest.csv still lists the original names and labels: training reads the labels from the folders
    return _scratch_runs(data, lambda kind: root / kind)


def _wait_until_up(process, url: str, log) -> None:
    """Until a served page answers 200; a server that exits or never answers fails the test with its log."""
    import time
    import urllib.request

    deadline = time.monotonic() + 180
    while True:
        if process.poll() is not None:
            pytest.fail(f"hfxray serve exited with {process.returncode}:\n{Path(log).read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"hfxray serve did not answer in time:\n{Path(log).read_text()}")
        time.sleep(0.5)


@pytest.fixture(scope="session")
def wait_until_up():
    """`wait_until_up(process, url, log_path)`: for tests that start `hfxray serve` in a child process."""
    return _wait_until_up
