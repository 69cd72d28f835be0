"""`make demo`: start everything, send a few sample requests, show the results, stop."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

from services.cli.ask import ask
from services.cli.cluster import ClusterError, LocalCluster, free_port

OUT = Path("chorus-out/demo")


def _sample_image(folder: Path) -> Path:
    """A simple drawing, so the demo needs no file from anywhere."""
    image = Image.new("RGB", (256, 192), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([30, 100, 120, 170], fill="steelblue")
    draw.polygon([(30, 100), (75, 50), (120, 100)], fill="firebrick")
    draw.ellipse([160, 30, 220, 90], fill="gold")
    path = folder / "house.png"
    image.save(path)
    return path


def main() -> int:
    addr = f"127.0.0.1:{free_port()}"
    cluster = LocalCluster(grpc_addr=addr, log_dir=OUT / "logs")
    print("starting Chorus (embedded NATS + four services)...", flush=True)
    try:
        cluster.start()
    except ClusterError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    try:
        with tempfile.TemporaryDirectory() as tmp:
            house = _sample_image(Path(tmp))
            requests = [
                ("Find the edges in house.png", [house]),
                ("Find the straight lines in house.png", [house]),
                ("Make a scribble of house.png", [house]),
                (
                    'How similar are "a cat sleeps on the sofa" and "a kitten naps on the couch"?',
                    [],
                ),
                ("Hello! What can you do?", []),
            ]
            for text, files in requests:
                print(f"\n=== chorus ask {text!r}" + "".join(f" --file {f.name}" for f in files))
                ask(text, files, addr=addr, out=OUT, as_json=False, stop_after=None)
    finally:
        print("\nstopping...", flush=True)
        cluster.stop()
    print(f"done; generated files are in {OUT}/")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
