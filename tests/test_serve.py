"""`hfxray serve` as a user meets it: the real server in its own process on a free port, driven with
`gradio_client` (answers equal to `hfxray predict`'s) and with headless Chromium (upload, label, heatmap)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hfxray.serve import EXPLANATION_TITLE, ServeError, build_app, find_examples, metrics_markdown

REPO_ROOT = Path(__file__).resolve().parent.parent
UPLOAD_CAP_MB = 8  # small, so that the too-large case needs only a small file; above the 5.9 MB WG04 RG3 file
BROWSER_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--window-size=1400,1800")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _environment(tmp: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
            "GRADIO_TEMP_DIR": str(tmp / "gradio"), "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def server(tiny_runs, sample_dir, tmp_path_factory, wait_until_up):
    """`hfxray serve` on the two tiny models, in a child process, until the module's tests are done."""
    tmp = tmp_path_factory.mktemp("serve")
    port = _free_port()
    log = (tmp / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "hfxray.cli", "serve", "--model", str(tiny_runs["vit"]), "--model",
         str(tiny_runs["bit"]), "--port", str(port), "--max-upload-mb", str(UPLOAD_CAP_MB), "--examples",
         str(sample_dir)], env=_environment(tmp), stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(process, url, tmp / "server.log")
        yield {"url": url, "process": process, "tmp": tmp}
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server["url"], verbose=False, download_files=str(server["tmp"] / "downloads"))


@pytest.fixture(scope="module")
def limb() -> Path:
    """NEMA WG04 RG3_UNCR.dcm (pydicom-data): a real CR of a tibia, BodyPartExamined EXTREMITY."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG3_UNCR.dcm")
    if path is None:
        pytest.skip("the NEMA WG04 files are not installed (pip install pydicom-data, in the [dev] extra)")
    return Path(path)


@pytest.fixture(scope="module")
def xray(sample_dir) -> Path:
    return find_examples(sample_dir, count=2)[1]  # a virus case of the test split


@pytest.fixture(scope="module")
def xray_dicom(xray, tmp_path_factory) -> Path:
    """The same radiograph as a 12-bit MONOCHROME1 DICOM with a window, as a CR reader would write it."""
    from test_dicom import make_dicom

    gray = np.asarray(Image.open(xray).convert("L")).astype(np.uint16)
    return make_dicom(tmp_path_factory.mktemp("dicom") / "xray.dcm", (255 - gray) * 16, photometric="MONOCHROME1",
                      modality="CR", WindowCenter=2040, WindowWidth=4081)


def _predict_cli(run_dir: Path, files: list[Path], out: Path) -> dict[str, dict]:
    from hfxray.cli import main

    assert main(["predict", *map(str, files), "--model", str(run_dir), "--out", str(out)]) == 0
    return {Path(row["file"]).name: row for row in json.loads(out.read_text())}


def _analyze(client, path: Path):
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), api_name="/analyze")


def _not_blank(image) -> float:
    pixels = np.asarray((image if isinstance(image, Image.Image) else Image.open(image)).convert("RGB"),
                        dtype=np.float64)
    return float(pixels.std())


def _inline_image(html: str, caption: str) -> Image.Image:
    """The one image of an output figure, decoded from its `data:` URI (the page gets no image file)."""
    import base64
    import io
    import re

    assert "<figcaption" in html and caption in html, html[:300]
    [encoded] = re.findall(r'<img src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)" alt="[^"]+"', html)
    image = Image.open(io.BytesIO(base64.b64decode(encoded)))
    assert image.format == "JPEG"
    return image


def test_client_answers_equal_hfxray_predict(server, client, tiny_runs, xray, xray_dicom, tmp_path):
    names = ["vit", "bit"]
    expected = {name: _predict_cli(tiny_runs[name], [xray, xray_dicom], tmp_path / f"{name}.json") for name in names}
    for path in (xray, xray_dicom):
        status, preview, *rest = _analyze(client, path)
        assert "Analysed" in status and "dashed amber rectangle is the area the models analyse" in status, status
        shown = _inline_image(preview, "decoded input (dashed: the area the models analyse)")
        assert _not_blank(shown) > 5 and max(shown.size) <= 768
        raw = rest[-1]
        for index, name in enumerate(names):
            label, overlay, line = rest[3 * index:3 * index + 3]
            cli = expected[name][path.name]
            assert not cli["error"]
            assert label["label"] == cli["label"] == raw[index]["label"]
            shown = {entry["label"]: entry["confidence"] for entry in label["confidences"]}
            for probabilities in (shown, raw[index]["probabilities"]):
                assert probabilities[cli["label"]] == pytest.approx(cli["probability"], abs=1e-5)
                assert probabilities["virus"] == pytest.approx(cli["p_virus"], abs=1e-5)
                assert probabilities["normal"] == pytest.approx(1 - cli["p_virus"], abs=1e-5)
            assert f"Prediction: {cli['label']}" in line
            overlay = _inline_image(overlay, f"{name}: {EXPLANATION_TITLE[raw[index]['explanation']]}")
            assert _not_blank(overlay) > 5, f"{name}'s overlay is blank"
            width, height = overlay.size
            assert width > height + 50  # the colour scale beside the square heatmap
            # the run's OOD check read the same forward pass as predict: same status, same score
            assert raw[index]["ood"] == cli["ood"] != "not checked"
            assert raw[index]["ood_score"] == pytest.approx(cli["ood_score"], abs=1e-3)
            assert "Similarity to the training images" in line or "unlike the training images" in line
        assert [entry["explanation"] for entry in raw] == ["rollout", "gradcam"]


def _hostile_dicom(path: Path) -> Path:
    """A CT volume in one multi-frame object: no single 2-D image to analyse."""
    from test_dicom import make_dicom

    return make_dicom(path, np.arange(48).reshape(12, 4), modality="CT", NumberOfFrames=3, Rows=4)


@pytest.mark.parametrize("case, expected", [
    ("empty.png", "zero-byte file"),
    ("truncated.jpeg", "corrupt or truncated image"),
    ("notes.txt", "not an image"),
    ("ct.dcm", "multi-frame DICOM (3 frames)"),
    ("bomb.dcm", "decompression bomb"),
])
def test_bad_files_get_a_message_in_the_page(server, client, xray, tmp_path, case, expected):
    path = tmp_path / case
    if case == "empty.png":
        path.write_bytes(b"")
    elif case == "truncated.jpeg":
        path.write_bytes(xray.read_bytes()[:2000])
    elif case == "notes.txt":
        path.write_text("not an X-ray\n")
    elif case == "ct.dcm":
        _hostile_dicom(path)
    else:
        from test_dicom import make_dicom

        make_dicom(path, np.zeros((4, 4)), Rows=50000, Columns=50000)
    status, preview, *rest = _analyze(client, path)
    assert status.startswith("**Cannot read this file:**") and expected in status, status
    assert "Traceback" not in status and preview is None
    labels, overlays, raw = rest[0:-1:3], rest[1:-1:3], rest[-1]
    assert all(not (label or {}).get("label") for label in labels), labels  # previous answers are cleared
    assert all(overlay is None for overlay in overlays) and not raw
    assert server["process"].poll() is None


def test_too_large_upload_is_refused_and_the_server_lives(server, client, xray, tmp_path):
    from gradio_client import handle_file

    big = tmp_path / "big.png"
    big.write_bytes(xray.read_bytes() + os.urandom(UPLOAD_CAP_MB * 2**20))
    # Gradio refuses the upload itself (HTTP 413), before any of it reaches the models.
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        client.predict(handle_file(str(big)), api_name="/analyze")
    assert server["process"].poll() is None
    status, *_ = _analyze(client, xray)  # still serving
    assert "Analysed" in status


def test_two_users_at_once_are_both_answered(server, client, xray, xray_dicom):
    from gradio_client import Client

    second = Client(server["url"], verbose=False, download_files=str(server["tmp"] / "downloads2"))
    results: dict[str, tuple] = {}

    def user(name, which, path):
        results[name] = _analyze(which, path)

    threads = [threading.Thread(target=user, args=("a", client, xray)),
               threading.Thread(target=user, args=("b", second, xray_dicom))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert set(results) == {"a", "b"}
    assert all("Analysed" in result[0] for result in results.values())
    # Same radiograph, two encodings: equal labels show the queue kept the two requests apart.
    assert [r["label"] for r in results["a"][-1]] == [r["label"] for r in results["b"][-1]]


def test_a_ct_slice_is_answered_and_flagged_out_of_scope(server, client):
    """pydicom's CT test file: one grayscale slice, analysed, with the header's modality in the status."""
    from pydicom.data import get_testdata_file

    status, preview, *rest = _analyze(client, Path(get_testdata_file("CT_small.dcm")))
    assert ("Out of scope: the DICOM header says modality CT, not CR/DX (plain radiography): a CT slice is a "
            "cross-section") in status, status
    raw = rest[-1]
    assert _not_blank(_inline_image(preview, "decoded input")) > 5  # flagged, still answered
    assert all(entry["label"] for entry in raw)
    assert all("modality CT" in entry["out_of_scope"] for entry in raw)


def test_an_extremity_radiograph_is_flagged_out_of_scope(server, client, limb):
    status, preview, *rest = _analyze(client, limb)
    assert "Out of scope: the DICOM header says body part EXTREMITY, not the chest" in status, status
    assert "unlike the images vit, bit were trained on" in status  # both models' OOD checks flag it too
    raw = rest[-1]
    assert [entry["ood"] for entry in raw] == ["unlike the training images"] * 2
    assert all("unlike the training images" in line for line in rest[2:-1:3])
    assert _not_blank(_inline_image(preview, "decoded input")) > 5  # flagged, still answered
    assert all(entry["label"] for entry in raw)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    return None


def test_browser_upload_shows_label_and_heatmap(server, tiny_runs, sample_dir, xray, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e .[dev])")
    binary, driver_path = _chromium(), shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install chromium "
                    "chromium-driver); .ci/run installs them")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in BROWSER_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        driver.get(server["url"])
        wait = WebDriverWait(driver, 90)
        assert "not a medical device" in wait.until(
            expected_conditions.visibility_of_element_located((By.ID, "disclaimer"))).text
        population = driver.find_element(By.ID, "population").text  # from the runs' model cards
        assert "children aged 1-5, one hospital" in population and "Shortcut risk" in population
        assert "attention rollout" not in driver.page_source and "Grad-CAM" not in driver.page_source
        assert "where the model's attention went (all classes)" in driver.find_element(By.ID, "model-0").text
        driver.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(xray))
        wait.until(lambda d: "Analysed" in d.find_element(By.ID, "status").text)
        assert "dashed amber rectangle" in driver.find_element(By.ID, "status").text
        assert "Similarity to the training images" in driver.find_element(By.ID, "answer-1").text or \
            "unlike the training images" in driver.find_element(By.ID, "answer-1").text
        expected = _predict_cli(tiny_runs["bit"], [xray], tmp_path / "bit.json")[xray.name]["label"]
        # gr.Label shows the top class as its heading (data-testid="label-output-value").
        heading = (By.CSS_SELECTOR, "#label-1 [data-testid=label-output-value]")
        wait.until(lambda d: d.find_element(*heading).text.strip())
        assert driver.find_element(*heading).text.strip() == expected
        assert f"Prediction: {expected}" in driver.find_element(By.ID, "answer-1").text
        heatmap = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#heatmap-1 img"))[0]
        wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", heatmap))
        # inline pixels, kept by gr.HTML as sent: no image file on the server, no URL to fetch
        assert heatmap.get_attribute("src").startswith("data:image/jpeg;base64,")
        assert "bit: areas that raised the score of its answer" in driver.find_element(By.ID, "heatmap-1").text
        shot = tmp_path / "heatmap.png"
        shot.write_bytes(heatmap.screenshot_as_png)
        assert _not_blank(shot) > 5, "the heatmap image is blank"
        assert driver.execute_script("return arguments[0].naturalWidth > arguments[0].naturalHeight + 50", heatmap)
        preview = driver.find_element(By.CSS_SELECTOR, "#preview img")
        wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", preview))
        assert preview.get_attribute("src").startswith("data:image/jpeg;base64,")
        shot.write_bytes(preview.screenshot_as_png)
        pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=int)
        amber = (pixels[..., 0] > 200) & (pixels[..., 1] > 140) & (pixels[..., 1] < 230) & (pixels[..., 2] < 90)
        assert amber.sum() > 200, "no analysed-area rectangle on the input"  # a gray X-ray has no amber pixel
        page = tmp_path / "serve.png"
        driver.set_window_size(1400, driver.execute_script("return document.body.scrollHeight") + 40)
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(page))
        assert page.stat().st_size > 0
        if os.environ.get("HFXRAY_UPDATE_SCREENSHOT"):  # refresh the README's picture: docs/serve.png
            picture = Image.open(page).convert("RGB")
            picture = picture.resize((900, round(picture.height * 900 / picture.width)), Image.Resampling.LANCZOS)
            picture.quantize(colors=128).save(REPO_ROOT / "docs" / "serve.png", optimize=True)  # small in git
        card = driver.find_element(By.ID, "card-1")  # the model card, one click away
        assert "Model card of bit" in card.text and "Training recipe" not in card.text  # closed until asked
        card.find_element(By.TAG_NAME, "button").click()
        wait.until(lambda d: "Training recipe" in d.find_element(By.ID, "card-1").text)
        example = find_examples(sample_dir)[0]  # one click: the example's kept copy reaches the analysis unprocessed
        driver.find_element(By.XPATH, f"//*[normalize-space(text())='{example.name}']").click()
        status = (By.ID, "status")  # until this example's answer, or the reason it has none
        wait.until(lambda d: example.name in d.find_element(*status).text or "Cannot" in d.find_element(*status).text)
        assert f"Analysed {example.name}" in driver.find_element(*status).text, driver.find_element(*status).text
    finally:
        driver.quit()


def test_analyze_refuses_an_oversize_file_before_decoding(tmp_path):
    from hfxray.imaging import ImageProblem
    from hfxray.serve import analyze

    path = tmp_path / "big.png"
    path.write_bytes(b"\0" * (2**20 + 1))
    with pytest.raises(ImageProblem, match="file too large: 1.0 MiB, the limit is 1 MiB"):
        analyze([], path, max_bytes=2**20)


def test_metrics_line_reads_test_results():
    results = {"test_accuracy": 0.85, "test_auroc": 0.9, "test_ece": 0.04, "test_n": 92,
               "test_ci95": {"accuracy": [0.8, 0.9], "auroc": [0.85, 0.95], "ece": [0.03, 0.07]}}
    line = metrics_markdown(results)
    assert line == ("Test split (92 images): accuracy 0.850 (95 % CI 0.800–0.900) · AUROC 0.900 (95 % CI "
                    "0.850–0.950) · ECE 0.040 (95 % CI 0.030–0.070)")
    assert "AUROC n/a" in metrics_markdown({**results, "test_auroc": float("nan")})
    debiased = metrics_markdown({**results, "test_ece_noise_floor": 0.035, "test_ece_debiased": 0.01,
                                 "test_ci95": {**results["test_ci95"], "ece": [0.0, 0.05]}})
    assert debiased.endswith("ECE 0.040 (noise floor 0.035; debiased 0.010, 95 % CI 0.000–0.050)")
    assert "not evaluated" in metrics_markdown({})


def test_examples_alternate_classes(sample_dir):
    examples = find_examples(sample_dir)
    assert len(examples) == 4 and all(path.is_file() for path in examples)
    assert find_examples(None) == [] and find_examples(sample_dir / "missing") == []


def test_serve_refuses_a_bad_model_folder(tmp_path, capsys):
    from hfxray.cli import main

    assert main(["serve", "--model", str(tmp_path)]) == 2
    assert "To fix" in capsys.readouterr().err
    with pytest.raises(ServeError):
        build_app([])


def test_examples_asked_for_by_name_and_not_found_stop_before_serving(tmp_path, capsys):
    from hfxray.cli import main as cli_main

    code = cli_main(["serve", "--model", str(tmp_path / "never-loaded"), "--examples", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert code == 2 and "--examples" in err and "To fix" in err and len(err.strip().splitlines()) == 1


def test_analysed_box_is_the_processors_centre_crop():
    from types import SimpleNamespace

    from hfxray.serve_content import analysed_area_text, analysed_box

    crop = SimpleNamespace(size={"shortest_edge": 72}, do_center_crop=True, crop_size={"height": 64, "width": 64})
    # 512 x 315: shortest edge 315 -> 72, so the 64 px crop is 280 px of the film, centred
    left, top, right, bottom = analysed_box(crop, 512, 315)
    assert (right - left, bottom - top) == (pytest.approx(280), pytest.approx(280))
    assert (left, top) == (pytest.approx(116), pytest.approx(17.5))
    assert "the 51 % of the image outside it, often the lateral lung edges" in analysed_area_text(
        512, 315, [(left, top, right, bottom)])
    tall = analysed_box(crop, 315, 512)  # the same film upright: the crop cuts its top and bottom
    assert "the top and bottom of a tall film" in analysed_area_text(315, 512, [tall])
    squash = SimpleNamespace(size={"height": 224, "width": 224}, do_center_crop=False)
    assert analysed_box(squash, 512, 315) == (0, 0, 512, 315)  # resized whole, nothing cut off
    assert analysed_area_text(512, 315, [(0, 0, 512, 315)]) == "The models see the whole image (resized)."


def test_population_comes_from_the_cards_limitations(tiny_runs, tmp_path):
    from types import SimpleNamespace

    from hfxray.serve import read_card
    from hfxray.serve_content import population_markdown

    cards = {name: read_card(tiny_runs[name]) for name in ("vit", "bit")}
    assert not cards["vit"].startswith("---") and "![" not in cards["vit"]  # no Hub metadata, no dead figure links
    models = [SimpleNamespace(name=name, card=card) for name, card in cards.items()]
    text = population_markdown(models)
    assert text.count("**Paediatric, single site.**") == 1 and "aged 1-5" in text and "Shortcut risk" in text
    assert text.count("**Small test set.**") == 2  # each run's own interval, named
    missing = population_markdown([SimpleNamespace(name="old", card=read_card(tmp_path))])
    assert "no model card" in missing and "unknown" in missing


def test_a_square_resize_run_is_served_with_its_own_crop_box_and_evaluates_answers(square_run, prepared_dir):
    """`--resize_mode square`: the page's answer is the run's evaluated probability, and the box drawn on a real
    non-square X-ray is the 64 px centre of the whole film squashed to 72 x 72 (rows and columns 4..68 of 72)."""
    from hfxray.evaluation import read_predictions_csv
    from hfxray.serve import analyze, load_served_model
    from hfxray.serve_content import analysed_area_text, analysed_box

    evaluated = read_predictions_csv(square_run / "test_predictions.csv")
    name = next(name for name in sorted(evaluated) if Image.open(prepared_dir / name).width
                > 1.2 * Image.open(prepared_dir / name).height)
    served = load_served_model(square_run)
    image, [answer] = analyze([served], prepared_dir / name)
    assert answer.probabilities["virus"] == pytest.approx(evaluated[name][2], abs=1e-4)
    assert answer.model_input.shape == (64, 64, 3) and answer.heatmap.shape == (64, 64)
    width, height = image.size
    box = analysed_box(served.processor, width, height)
    assert box == pytest.approx((4 * width / 72, 4 * height / 72, 68 * width / 72, 68 * height / 72))
    assert ("the 21 % of the image outside it, a margin along every edge of the film, is not seen"  # 1 - (64/72)^2
            in analysed_area_text(width, height, [box]))
