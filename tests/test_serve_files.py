"""`hfxray serve` keeps nothing: a real server in its own process, real client requests after which its private
folder holds no upload and no derived image, real signals (SIGTERM, SIGINT, SIGHUP) after which the folder is gone,
and the installed gradio package gained no file."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hfxray.cli import main
from hfxray.serve import find_examples
from hfxray.serve_files import PrivateFolder

REPO_ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _package_files(package: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in package.rglob("*") if p.is_file()}


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_serve_keeps_no_file_after_a_request_and_a_signal(tiny_models, sample_dir, tmp_path, wait_until_up):
    """Right after each request the private folder holds only gradio's hash seed: no upload (dropped on the file
    input or pasted), no derived image (they reach the page inline). Then SIGTERM, whose default action would end
    the process without any cleanup (Ctrl+C and SIGHUP: the next test, without a second ~30 s server start)."""
    import gradio
    from gradio_client import Client, handle_file

    package = Path(gradio.__file__).parent
    before = _package_files(package)
    xray = find_examples(sample_dir, count=2)[1]
    # A 16-bit grayscale PNG, as a PACS export writes one: the paste input must hand it over as uploaded (Gradio's
    # own preprocessing would save a second copy, converted to 8-bit RGB, which clips it almost all white).
    deep = tmp_path / "deep.png"
    Image.fromarray(np.asarray(Image.open(xray).convert("L")).astype(np.uint16) * 200).save(deep)
    assert Image.open(deep).mode == "I;16"
    temp, port, log = tmp_path / "temp", _free_port(), tmp_path / "server.log"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "GRADIO_TEMP_DIR": str(temp),
           "TMPDIR": str(tmp_path)}
    with log.open("w") as handle:
        process = subprocess.Popen([sys.executable, "-m", "hfxray.cli", "serve", "--model", str(tiny_models / "vit"),
                                    "--port", str(port), "--examples", "none"], env=env, stdout=handle,
                                   stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        wait_until_up(process, f"http://127.0.0.1:{port}/", log)
        [private] = temp.glob("hfxray-serve-*")
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
        assert _files(private) == ["hash_seed.txt"]  # gradio's seed is written here, not into its package
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(tmp_path / "downloads"))
        answers = {}
        for api, path in (("/analyze", xray), ("/analyze", deep), ("/analyze_pasted", deep)):
            result = client.predict(handle_file(str(path)), api_name=api)
            assert result[0].startswith(f"Analysed **{path.name}**"), result[0]
            assert result[1].count('src="data:image/jpeg;base64,') == result[3].count("data:image/jpeg") == 1
            assert _files(private) == ["hash_seed.txt"], f"{api} left files behind"
            answers[api, path.name] = result[-1][0]["probabilities"]
        assert answers["/analyze_pasted", deep.name] == answers["/analyze", deep.name]  # the very file uploaded
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not private.exists(), sorted(private.rglob("*"))
    assert not (tmp_path / ".gradio").exists()
    assert "Traceback" not in log.read_text()
    assert _package_files(package) == before  # no file added to (or rewritten in) the installed gradio


# `hfxray serve` with the server replaced by what gradio 6.31's Blocks.block_thread does (sleep in the main thread
# until KeyboardInterrupt, then close the server and return), after an upload was written into the private folder.
_BLOCKED_SERVER = """
import sys, time
from hfxray.cli import main
from hfxray.commands import serve

def blocked(args, files):
    (files.path / "upload").mkdir()
    (files.path / "upload" / "xray.png").write_bytes(b"an upload")
    try:
        print(files.path, flush=True)  # the test signals as soon as it reads this line
        while True:
            time.sleep(0.1)
    except KeyboardInterrupt:
        print("Keyboard interruption in main thread... closing server.", flush=True)
    return 0

serve._serve = blocked
sys.exit(main(["serve", "--model", "unused", "--port", sys.argv[1], "--examples", "none"]))
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP], ids=["SIGINT", "SIGHUP"])
def test_ctrl_c_and_hangup_delete_the_private_folder(tmp_path, signum):
    """A real signal to a real `hfxray serve` process (its server a stand-in, ~1 s instead of ~30 s)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "GRADIO_TEMP_DIR": str(tmp_path / "temp")}
    # Python installs its Ctrl+C handler only when SIGINT is not ignored at start, as it is for a background job
    process = subprocess.Popen([sys.executable, "-c", _BLOCKED_SERVER, str(_free_port())], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        private = Path(process.stdout.readline().strip())
        assert private.parent == tmp_path / "temp" and (private / "upload" / "xray.png").is_file()
        process.send_signal(signum)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    assert "closing server" in output and "Traceback" not in output
    assert not private.exists() and list((tmp_path / "temp").iterdir()) == []


def test_sweep_deletes_old_files_but_not_examples_and_discard_only_inside(tmp_path):
    folder = PrivateFolder(tmp_path / "parent")
    assert stat.S_IMODE(folder.path.stat().st_mode) == 0o700
    old, example, fresh = (folder.path / name / "x.jpeg" for name in ("a1", "ex", "b2"))
    for path in (old, example, fresh):
        path.parent.mkdir()
        path.write_bytes(b"jpeg")
    long_ago = time.time() - 3600
    for path in (old, example):
        os.utime(path, (long_ago, long_ago))
    folder.keep.add(os.path.realpath(example))
    assert folder.sweep() == 1
    assert not old.parent.exists() and example.exists() and fresh.exists()
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"png")
    folder.discard(outside)
    folder.discard(example)
    assert outside.exists() and example.exists()
    folder.discard(fresh)
    assert not fresh.parent.exists()
    folder.remove()
    assert not folder.path.exists()


def test_the_examples_copies_outlive_requests(tiny_models, sample_dir, tmp_path, monkeypatch):
    """Gradio copies the example images into the folder when the page is built, keeping the originals' old mtime:
    no request's sweep or discard may take them (a click on an example then analysed a file that was gone)."""
    from hfxray.serve import build_app, load_served_model

    folder = PrivateFolder(tmp_path)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(folder.path))
    examples = find_examples(sample_dir, count=2)
    build_app([load_served_model(tiny_models / "vit")], examples, files=folder)
    copies = [p for p in folder.path.rglob("*") if p.is_file()]
    assert sorted(p.name for p in copies) == sorted(p.name for p in examples)
    originals = {p.name: p.stat().st_mtime for p in examples}
    assert all(copy.stat().st_mtime == originals[copy.name] for copy in copies)  # old: an age-based sweep's prey
    upload = folder.path / "upload" / "xray.png"
    upload.parent.mkdir()
    upload.write_bytes(b"an upload")
    time.sleep(0.01)
    assert folder.sweep(older_than=0) == 1 and not upload.exists()
    for copy in copies:
        folder.discard(copy)
    assert all(copy.is_file() for copy in copies)
    folder.remove()


def test_a_busy_port_is_one_line(tiny_models, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--model", str(tiny_models / "vit"), "--port", str(port), "--examples", "none"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot listen on 127.0.0.1:{port} (") and "To fix: " in err
    assert len(err.strip().splitlines()) == 1


def test_an_unusable_temp_folder_is_one_line(tiny_models, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(blocker / "sub"))
    assert main(["serve", "--model", str(tiny_models / "vit"), "--port", str(_free_port()), "--examples",
                 "none"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot create a private temporary folder in ") and "To fix: " in err


def test_serving_in_process_leaves_the_environment_as_it_was(tmp_path, monkeypatch, capsys):
    """`hfxray serve` run through cli.main (a notebook, a test) that stops early restores what it set."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "parent"))
    before = (signal.getsignal(signal.SIGTERM), dict(os.environ), list(sys.meta_path))
    assert main(["serve", "--model", str(tmp_path / "missing"), "--port", str(_free_port()), "--examples",
                 "none"]) == 2
    assert "error: " in capsys.readouterr().err
    assert (signal.getsignal(signal.SIGTERM), dict(os.environ), list(sys.meta_path)) == before
    assert list((tmp_path / "parent").iterdir()) == []  # the private folder is gone
