"""Cut the vendored CIFAR-10 subset (fxprune/data/cifar10-subset.tar.gz) out of the full JPEG archive.

Usage:

    .venv/bin/python scripts/make_cifar_subset.py SRC DST [--train 200] [--test 100]

    e.g. .venv/bin/python scripts/make_cifar_subset.py /work/shared/data/cifar10-jpeg.tar.gz \\
             fxprune/data/cifar10-subset.tar.gz

SRC has the layout `train/<class>/<NNNN>.jpg` and `test/<class>/<NNNN>.jpg` (see /work/shared/data/README.md).
DST gets the same layout with the first N files per class by sorted file name (200 train and 100 test by
default: 2,000 / 1,000 images). The JPEG bytes are copied as they are (no re-encoding), and the tar and gzip
headers carry fixed times and owners, so the same SRC always gives a byte-identical DST (about 1 MB).
"""
from __future__ import annotations

import argparse
import gzip
import io
import re
import tarfile
from pathlib import Path

MEMBER = re.compile(r"^(?:.*/)?(train|test)/([^/]+)/([^/]+\.(?:jpe?g|png))$", re.IGNORECASE)


def read_images(src: Path) -> dict[tuple[str, str], dict[str, bytes]]:
    """All images of `src` as {(split, class): {file name: bytes}}, in one streaming pass."""
    out: dict[tuple[str, str], dict[str, bytes]] = {}
    with tarfile.open(src, "r:*") as tar:
        for member in tar:
            match = MEMBER.match(member.name)
            if member.isfile() and match:
                split, cls, fname = match.groups()
                out.setdefault((split, cls), {})[fname] = tar.extractfile(member).read()
    return out


def write_subset(images: dict[tuple[str, str], dict[str, bytes]], dst: Path, counts: dict[str, int]) -> int:
    """Write the first counts[split] files (sorted by name) of every class to `dst`; return the file count."""
    n = 0
    with open(dst, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for split, cls in sorted(images):
            for fname in sorted(images[split, cls])[:counts[split]]:
                data = images[split, cls][fname]
                info = tarfile.TarInfo(f"{split}/{cls}/{fname}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
                n += 1
    return n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="the full CIFAR-10 JPEG archive")
    parser.add_argument("dst", type=Path, help="where to write the subset archive")
    parser.add_argument("--train", type=int, default=200, help="train images per class")
    parser.add_argument("--test", type=int, default=100, help="test images per class")
    args = parser.parse_args(argv)
    if not args.src.is_file():
        raise SystemExit(f"source archive '{args.src}' not found (the full archive lives in "
                         "/work/shared/data/cifar10-jpeg.tar.gz on the project machines)")
    images = read_images(args.src)
    if not images:
        raise SystemExit(f"'{args.src}' holds no train/<class>/*.jpg or test/<class>/*.jpg files")
    n = write_subset(images, args.dst, {"train": args.train, "test": args.test})
    print(f"wrote {n} images to {args.dst} ({args.dst.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
