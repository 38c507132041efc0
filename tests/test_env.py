"""`hfxray.env`: telling an unreachable Hub in a moment, and what a Hub id then loads from (the local cache)."""

from __future__ import annotations

import shutil

import pytest
from huggingface_hub import constants

from hfxray import env


@pytest.fixture
def hub_online(monkeypatch):
    """HF_HUB_OFFLINE lifted (the suite sets it), and the reachability answer asked afresh."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for variable in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
    check = env.hub_unreachable
    check.cache_clear()
    yield
    check.cache_clear()


@pytest.fixture
def no_network(hub_online, monkeypatch):
    monkeypatch.setattr(env, "hub_unreachable", lambda: "huggingface.co:443: Name or service not known")
    monkeypatch.setattr("hfxray.models.hub_unreachable", env.hub_unreachable)  # (for its message)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, tiny_models):
    """A local Hugging Face cache holding `someone/tiny-vit` (a tiny model saved by hfxray) at its main revision."""
    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--tiny-vit" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_models / "vit", snapshot)
    (cache / "models--someone--tiny-vit" / "refs").mkdir()
    (cache / "models--someone--tiny-vit" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return snapshot


def test_an_endpoint_that_does_not_resolve_is_named_at_once(hub_online, monkeypatch):
    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.invalid")  # .invalid never resolves (RFC 2606)
    assert env.hub_unreachable().startswith("hub.invalid:443: ")


def test_behind_a_proxy_reachability_is_left_to_the_proxy(hub_online, monkeypatch):
    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.invalid")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert env.hub_unreachable() == ""


@pytest.mark.parametrize("endpoint", ["http://localhost:99999", "http://localhost:abc", "hf-mirror.com"])
def test_an_endpoint_that_is_no_plain_url_is_left_to_huggingface_hub(hub_online, monkeypatch, endpoint):
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    assert env.hub_unreachable() == ""


def test_a_refused_connection_is_named(hub_online, monkeypatch):
    import socket

    with socket.socket() as server:  # a port that was free a moment ago: nothing listens there now
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    assert env.hub_unreachable().startswith(f"127.0.0.1:{port}: ")


def test_cached_snapshot_finds_the_cached_copy_and_nothing_else(hub_cache):
    assert env.cached_snapshot("someone/tiny-vit") == str(hub_cache)
    assert env.cached_snapshot("someone/not-cached") is None
    assert env.cached_snapshot("not a repo id") is None


def test_without_network_a_hub_id_fails_in_one_line_without_retries(no_network, capfd):
    from hfxray.models import ModelLoadError, create_model
    from hfxray.predict import PredictError, load_classifier

    with pytest.raises(ModelLoadError, match=r"cannot be reached \(huggingface\.co:443: Name or service not known\),"
                                             r" and the repo is not in the local Hugging Face cache\. To fix"):
        create_model("vit", "full")
    with pytest.raises(PredictError, match="not in the local Hugging Face cache"):
        load_classifier("someone/not-cached")
    assert "Retrying" not in capfd.readouterr().err  # huggingface_hub's five retries, about 25 s


def test_without_network_a_cached_hub_id_loads_from_the_cache(no_network, hub_cache, sample_dir):
    from hfxray.models import load_trained
    from hfxray.predict import load_classifier

    model, _processor = load_trained("someone/tiny-vit")[:2]
    assert model.config.id2label == {0: "normal", 1: "virus"}
    classifier = load_classifier("someone/tiny-vit")
    image = next((sample_dir / "Coronahack-Chest-XRay-Dataset" / "Coronahack-Chest-XRay-Dataset" / "test").iterdir())
    assert {row["label"] for row in classifier(str(image))} == {"normal", "virus"}


def test_without_network_the_timm_bit_checkpoint_fails_in_one_line(no_network, tmp_path):
    from hfxray.bit_conversion import HubDownloadError, load_bit_in21k

    with pytest.raises(HubDownloadError, match="cannot be reached.*not in the local Hugging Face cache.*To fix"):
        load_bit_in21k(cache_dir=tmp_path)


def test_without_network_an_incomplete_cached_copy_is_named(no_network, hub_cache):
    from hfxray.models import ModelLoadError, load_trained
    from hfxray.predict import PredictError, load_classifier

    (hub_cache / "model.safetensors").unlink()  # only part of the repo was ever downloaded
    for load, error in ((load_trained, ModelLoadError), (load_classifier, PredictError)):
        with pytest.raises(error, match=r"cannot be reached \(huggingface.co:443: .*\), and its copy in the local "
                                        r"Hugging Face cache \(.*\) is incomplete .*To fix"):
            load("someone/tiny-vit")
