"""Serving overhead: one X-ray through the running `hfxray serve` app (as the page does it: upload, queue,
analysis, overlay and display images, answer over server-sent events) vs the same work called directly in this process (open the file, the
pipeline's calibrated probabilities, Grad-CAM). Same model, same image, requests interleaved. Also shown: the
same request through gradio_client. Goal: p50 ratio
<= 1.2 for bit.small on CPU.

    python benchmarks/serve.py [--model bit] [--preset small] [--requests 20] [--run RUN_FOLDER]

Without --run the preset is built with random weights (no download): latency does not depend on the weights.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from _common import require_sample  # noqa: E402


class PageClient:
    """What the page's JavaScript does for one event, and nothing more: upload the file, join the queue, read the
    server-sent events until the answer. (No polling, so the latency is the server's, not a client's loop.)"""

    def __init__(self, url: str, api_name: str):
        import httpx

        self.http = httpx.Client(base_url=url, timeout=120)
        config = self.http.get("/config").json()
        self.fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == api_name)

    def analyze(self, path: Path) -> list:
        import json
        import uuid

        with path.open("rb") as handle:
            uploaded = self.http.post("/gradio_api/upload", files={"files": (path.name, handle)})
        uploaded.raise_for_status()
        file_data = {"path": uploaded.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}
        session = uuid.uuid4().hex
        self.http.post("/gradio_api/queue/join", json={"data": [file_data], "fn_index": self.fn_index,
                                                       "trigger_id": None, "session_hash": session,
                                                       "event_data": None}).raise_for_status()
        with self.http.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    message = json.loads(line[5:])
                    if message.get("msg") == "process_completed":
                        if not message.get("success"):
                            raise RuntimeError(f"the app failed: {message}")
                        return message["output"]["data"]
        raise RuntimeError("the event stream ended without an answer")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bit", choices=("vit", "bit", "hybrid"))
    parser.add_argument("--preset", default="small", choices=("tiny", "small", "full"))
    parser.add_argument("--run", default=None, help="serve this trained run folder instead of a random-weight model")
    parser.add_argument("--requests", type=int, default=20, help="timed requests per side (after 2 warm-ups)")
    args = parser.parse_args()

    import torch
    from gradio_client import Client, handle_file

    from hfxray.explain import gradcam_map, rollout_map
    from hfxray.imaging import load_rgb
    from hfxray.models import create_model
    from hfxray.serve import build_app, find_examples, launch, load_served_model

    torch.set_num_threads(os.cpu_count() or 1)
    image_path = find_examples(require_sample(), count=2)[1]
    run = args.run
    if run is None:
        run = tempfile.mkdtemp(prefix="hfxray-bench-serve-")
        model, processor, _ = create_model(args.model, args.preset)
        model.save_pretrained(run)
        processor.save_pretrained(run)
    served = load_served_model(run, device="cpu")
    name = f"{served.family}.{args.preset}" if args.run is None else Path(run).name
    app = build_app([served])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launch(app, port=port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    page = PageClient(url, "analyze")
    # gradio_client polls its message queue every 50 ms, which a browser does not: reported, not the goal.
    client = Client(url, verbose=False, download_files=False)

    labels = served.model.config.id2label
    index = {label: int(i) for i, label in labels.items()}

    def direct() -> None:
        """What a script would call itself: open, calibrated probabilities, the kind's explanation."""
        image = load_rgb(image_path)
        scores = served.classifier(image, top_k=len(labels))
        pixel_values = served.processor(images=image, return_tensors="pt")["pixel_values"]
        if served.method == "gradcam":
            gradcam_map(served.model, pixel_values, index[scores[0]["label"]])
        else:
            with torch.no_grad():
                rollout_map(served.model, pixel_values)

    def through_page() -> None:
        status = page.analyze(image_path)[0]
        assert status.startswith("Analysed"), status

    def through_gradio_client() -> None:
        status = client.predict(handle_file(str(image_path)), api_name="/analyze")[0]
        assert status.startswith("Analysed"), status

    sides = {"direct": direct, "served": through_page, "gradio_client": through_gradio_client}
    times: dict[str, list[float]] = {side: [] for side in sides}
    for _ in range(2):  # warm-up: first-call allocations, the clients' first connections
        for function in sides.values():
            function()
    for _ in range(args.requests):
        for side, function in sides.items():
            start = time.perf_counter()
            function()
            times[side].append(time.perf_counter() - start)
    app.close()

    for side, values in times.items():
        print(f"{side:<13} p50 {1000 * statistics.median(values):7.1f} ms   p95 {1000 * percentile(values, 95):7.1f} ms"
              f"   ({len(values)} requests, {name}, {image_path.name})")
    ratio50 = statistics.median(times["served"]) / statistics.median(times["direct"])
    ratio95 = percentile(times["served"], 95) / percentile(times["direct"], 95)
    print(f"served / direct: p50 {ratio50:.2f} x, p95 {ratio95:.2f} x (goal p50 <= 1.2 x); through gradio_client: "
          f"p50 {statistics.median(times['gradio_client']) / statistics.median(times['direct']):.2f} x")


if __name__ == "__main__":
    main()
