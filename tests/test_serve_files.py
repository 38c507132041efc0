"""`hfxray serve` keeps nothing: a real server in its own process, a real client request, a real signal; then the
private folder is gone and the installed gradio package gained no file."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path


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


def test_serve_keeps_no_file_after_a_request_and_a_signal(tiny_models, sample_dir, tmp_path, wait_until_up):
    """SIGTERM, whose default action would end the process without any cleanup; Ctrl+C (SIGINT) takes the same
    path from the KeyboardInterrupt on (one server start costs ~30 s of imports, so one signal is tested)."""
    import gradio
    from gradio_client import Client, handle_file

    package = Path(gradio.__file__).parent
    before = _package_files(package)
    xray = find_examples(sample_dir, count=2)[1]
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
        assert (private / "hash_seed.txt").is_file()  # gradio's seed is written here, not into its package
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(tmp_path / "downloads"))
        result = client.predict(handle_file(str(xray)), api_name="/analyze")
        assert result[0].startswith(f"Analysed **{xray.name}**")
        left = [p for p in private.rglob("*") if p.is_file()]
        assert not [p for p in left if p.name == xray.name], "the upload outlived its request"
        assert [p for p in left if p.suffix == ".jpeg"], "the derived images the page fetches are here"
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
