"""Timings for the two hot paths of bot/imaging.py. A script that prints figures, not a test.

    python bench/bench_imaging.py [--runs 20]

1. Upload path: ``prepare_input`` on a 4000x3000 photo-like JPEG (max_edge=2048) as the service calls it
   for gpt-image-2 (JPEG allowed), and as a PNG-only model needs it, against a naive
   open/convert/resize/save baseline. Target: median under 150 ms.
2. Result path: base64 decode of the API's ``b64_json`` + ``inspect_output`` + ``fit_under(data, 10 MiB)``
   on a 1024x1024 PNG that already fits, so nothing is re-encoded. Target: under 20 ms of CPU.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import platform
import statistics
import time
from collections.abc import Callable

import PIL
from PIL import Image, ImageChops, features

from bot import imaging

TEN_MIB = 10 * 1024 * 1024


def photo_like(width: int, height: int, *, noise: float = 12.0) -> Image.Image:
    """Smooth colour gradients with per-channel Gaussian grain, roughly what a phone photo compresses like."""
    base = Image.merge(
        "RGB",
        (
            Image.linear_gradient("L").resize((width, height)),
            Image.radial_gradient("L").resize((width, height)),
            Image.linear_gradient("L").rotate(90).resize((width, height)),
        ),
    )
    grain = Image.merge("RGB", [Image.effect_noise((width, height), noise) for _ in range(3)])
    return ImageChops.add(base, grain, scale=1.0, offset=-128)


def encoded(img: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **options)
    return buffer.getvalue()


def measure(run: Callable[[], object], runs: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds per run, after one warm-up run."""
    run()
    wall: list[float] = []
    cpu: list[float] = []
    for _ in range(runs):
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        run()
        cpu.append(time.process_time() - cpu_start)
        wall.append(time.perf_counter() - wall_start)
    return wall, cpu


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


def report(label: str, wall: list[float], cpu: list[float]) -> None:
    print(
        f"  {label:<44} wall median {statistics.median(wall) * 1000:7.1f} ms  p90 {p90(wall) * 1000:7.1f} ms"
        f"   cpu median {statistics.median(cpu) * 1000:7.1f} ms  p90 {p90(cpu) * 1000:7.1f} ms"
    )


def naive_prepare(data: bytes) -> bytes:
    img = Image.open(io.BytesIO(data)).convert("RGB").resize((2048, 1536))
    return encoded(img, "PNG")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    runs = parser.parse_args().runs

    print(f"python {platform.python_version()} on {platform.platform()} ({platform.machine()})")
    print(f"cpu: {platform.processor() or 'unknown'}; os.cpu_count()={os.cpu_count()}")
    print(
        f"Pillow {PIL.__version__}; libjpeg {features.version('jpg')}, zlib {features.version('zlib')}, "
        f"libwebp {features.version('webp')}"
    )

    photo = encoded(photo_like(4000, 3000), "JPEG", quality=90)
    print(f"\n1. upload: 4000x3000 JPEG q90 ({len(photo) / 1e6:.1f} MB), max_edge=2048, {runs} runs")
    limits = {"max_bytes": 50 << 20, "max_pixels": 50_000_000, "max_edge": 2048}

    def ours() -> bytes:
        return imaging.prepare_input(photo, **limits, jpeg_ok=True).data  # type: ignore[arg-type]

    def ours_png() -> bytes:
        return imaging.prepare_input(photo, **limits).data  # type: ignore[arg-type]

    prepared = imaging.prepare_input(photo, **limits, jpeg_ok=True)  # type: ignore[arg-type]
    prepared_png = imaging.prepare_input(photo, **limits)  # type: ignore[arg-type]
    baseline = naive_prepare(photo)
    wall, cpu = measure(ours, runs)
    report("prepare_input (JPEG allowed: gpt-image-*)", wall, cpu)
    report("prepare_input (PNG only)", *measure(ours_png, runs))
    report("naive open/convert/resize/save(PNG)", *measure(lambda: naive_prepare(photo), runs))
    print(
        f"  output: ours {prepared.width}x{prepared.height} {prepared.mime_type} {len(prepared.data) / 1e6:.1f} MB, "
        f"PNG-only {len(prepared_png.data) / 1e6:.1f} MB; naive 2048x1536 PNG {len(baseline) / 1e6:.1f} MB"
    )
    print(f"  target median < 150 ms: {'met' if statistics.median(wall) < 0.150 else 'MISSED'}")

    # Where the time goes, stage by stage, with the same settings prepare_input uses.
    full = Image.open(io.BytesIO(photo))
    report("  stage: JPEG decode at full size", *measure(lambda: Image.open(io.BytesIO(photo)).load(), runs))
    full.load()
    lanczos = Image.Resampling.LANCZOS
    resized = full.resize((2048, 1536), lanczos)
    report("  stage: LANCZOS 4000x3000 -> 2048x1536", *measure(lambda: full.resize((2048, 1536), lanczos), runs))
    report("  stage: PNG encode (level 1, RLE)", *measure(lambda: imaging.encode_png(resized), runs))

    def smaller() -> bytes:
        return imaging.prepare_input(photo, max_bytes=50 << 20, max_pixels=50_000_000, max_edge=1024).data

    report("prepare_input, max_edge=1024 (1/2 draft)", *measure(smaller, runs))

    result = encoded(photo_like(1024, 1024), "PNG")
    b64 = base64.b64encode(result).decode("ascii")
    print(f"\n2. result: 1024x1024 PNG ({len(result) / 1e6:.1f} MB), b64 decode + inspect_output + fit_under(10 MiB)")

    def ready() -> None:
        data = base64.b64decode(b64, validate=True)
        imaging.inspect_output(data)
        fitted, _info = imaging.fit_under(data, TEN_MIB)
        assert fitted is data  # untouched: no re-encode

    wall, cpu = measure(ready, runs)
    report("b64 decode + inspect_output + fit_under", wall, cpu)
    print(f"  target cpu median < 20 ms: {'met' if statistics.median(cpu) < 0.020 else 'MISSED'}")
    report("  of which inspect_output", *measure(lambda: imaging.inspect_output(result), runs))
    report("  of which fit_under", *measure(lambda: imaging.fit_under(result, TEN_MIB), runs))


if __name__ == "__main__":
    main()
