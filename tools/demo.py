"""The main job on the embedded default: start the service, post frames as a camera would.

python -m tools.demo [--frames 3] [--seed 4] [--out demo-out]

Starts scrapscan (uvicorn, the demo bundle with its learned bed cropper, a SQLite store
in OUT/data) on a free local port, renders synthetic 4K crane frames, posts each to
/v1/frames?wait=true as camera "crane-1" of truck "DEMO-TRUCK-1", prints the verdict
and the strongest instances beside the frame's true contaminants, and saves each overlay
to OUT/. With --serve it keeps serving afterwards (the dashboard at /dashboard shows the
frames) until Ctrl-C or SIGTERM; `make demo SERVE=1` asks for that.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import httpx

from common.bundle import BundleError, load_bundle
from common.classes import CLASS_NAMES
from service.local import running_service
from service.settings import Settings
from training.synth import render_frame
from training.synth.frame import COVER


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the exit code."""
    p = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=3)
    p.add_argument("--seed", type=int, default=4)
    p.add_argument(
        "--cover",
        type=float,
        default=0.0,
        help="share of the bed's scrap laid over the contaminants (0: in plain view, the "
        f"frames the demo bundle was trained on; the renderer's default is {COVER})",
    )
    p.add_argument("--out", type=Path, default=Path("demo-out"))
    p.add_argument("--bundle", type=Path, help="model bundle (default: models/demo)")
    p.add_argument(
        "--serve",
        action="store_true",
        help="after the frames, keep serving (the dashboard shows them) until Ctrl-C",
    )
    p.add_argument("--port", type=int, default=0, help="local port (default: a free one)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    # no camera setting: the bed is "auto", the demo bundle's learned bed cropper
    settings = Settings(data_dir=args.out / "data")
    if args.bundle:
        settings = settings.model_copy(update={"bundle": args.bundle})
    try:
        load_bundle(settings.bundle, serving=True)  # a bad bundle is named before any start
        with running_service(settings, port=args.port, freeze_heap=True) as url:
            code = _post_frames(url, settings, args)
            if code == 0 and args.serve:
                stop = threading.Event()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    # set here: a process started in the background inherits SIGINT ignored
                    signal.signal(sig, lambda *_: stop.set())
                print(f"\ndemo: serving until Ctrl-C; the dashboard: {url}/dashboard")
                stop.wait()
            return code
    except (BundleError, RuntimeError) as err:
        print(f"demo: {err}", file=sys.stderr)
        return 1


def _post_frames(url: str, settings: Settings, args: argparse.Namespace) -> int:
    print(
        f"demo: scrapscan serving {settings.bundle} at {url} (dashboard at {url}/dashboard, "
        f"API docs at {url}/docs)"
    )
    for i in range(args.frames):
        frame = render_frame(args.seed, i, cover=args.cover)
        truth = [CLASS_NAMES[inst.class_index] for inst in frame.instances]
        ok, jpg = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        t0 = time.perf_counter()
        r = httpx.post(
            f"{url}/v1/frames",
            params={"wait": "true"},
            data={"camera_id": "crane-1", "truck_id": "DEMO-TRUCK-1"},
            files={"image": (f"frame_{i}.jpg", jpg.tobytes(), "image/jpeg")},
            timeout=300,
        )
        seconds = time.perf_counter() - t0
        body = r.json()
        if r.status_code != 200 or body["status"] != "done":
            print(f"demo: frame {i}: HTTP {r.status_code}: {body}", file=sys.stderr)
            return 1
        res = body["result"]
        overlay = httpx.get(f"{url}{body['links']['overlay']}").content
        path = args.out / f"frame_{i}_overlay.jpg"
        path.write_bytes(overlay)
        h, w = res["image"]["height"], res["image"]["width"]
        print(
            f"\nframe {i} ({w}x{h}, bed {res['bed']['strategy']}, {res['tiles']} tiles, "
            f"{seconds:.1f} s): verdict {res['verdict'].upper()}; "
            f"truly in it: {', '.join(truth) or 'nothing'}"
        )
        print(f"  peak anomaly {res['scores']['anomaly']:.3f}; {rule_text(res['thresholds'])}")
        for inst in res["instances"][:3]:
            x, y, bw, bh = inst["bbox"]
            print(
                f"  {inst['class']:9s} score {inst['score']:.2f}  "
                f"at x={x} y={y} {bw}x{bh} px ({inst['area']} px)"
            )
            if inst.get("description"):  # the bundle's region encoder
                print(f"            seen as: {inst['description']}")
        if len(res["instances"]) > 3:
            print(f"  ... {len(res['instances']) - 3} more")
        print(f"  overlay: {path}")
    print(
        "\ndemo: the demo bundle is the tiny model (models/README.md): it shows the "
        "pipeline, not the paper's accuracy"
    )
    return 0


def rule_text(t: dict[str, Any]) -> str:
    """What a region needs to become an instance under the bundle's thresholds."""
    need = [f"area >= {t['min_area_px']} px"]
    if t.get("min_score") is not None:
        need.insert(0, f"score >= {t['min_score']:.3f}")
    return f"an instance needs {' and '.join(need)}; reject from {t['reject_score']:.3f}"


if __name__ == "__main__":
    sys.exit(main())
