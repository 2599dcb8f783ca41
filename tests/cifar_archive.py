"""Tiny CIFAR archives in the real format, and a local server that stands in for the internet.

For other tests:

  write_archive(name: str, path, train: int = 40, test: int = 20) -> dict[str, tuple[np.ndarray, np.ndarray]]
      Writes `cifar-10-binary.tar.gz` / `cifar-100-binary.tar.gz` content (name 'cifar10' or
      'cifar100') to `path`; returns what it holds, {"train": (images, labels), "test": ...},
      images as uint8 (N, 32, 32, 3) and labels (CIFAR-100: fine) as int, in the archive's order
      (TFDS stores them in another: compare them as sets of pairs).
  serve(directory) -> context manager yielding the base URL (http://127.0.0.1:PORT/) of a
      real `http.server` over `directory`, stopped on exit.
  prepare_tiny_cifar(name: str, data_dir, train: int = 40, test: int = 20) -> dict[str, tuple[...]]
      Prepares a tiny `name` into the TFDS `data_dir` as `python -m resnet_identity.prepare`
      does with network, except that the archive comes from `serve`: TFDS's own builder and
      DownloadManager download it, register its checksum (TFDS's flow for a new file) and
      write the records that training reads. Returns what the archive held, as `write_archive`.

The layout is the one TFDS's builder reads (tensorflow_datasets/image_classification/cifar.py,
after https://www.cs.toronto.edu/~kriz/cifar.html): a gzipped tar whose folder holds the label
names and the batches; each record is the label byte(s) (CIFAR-100: coarse, then fine), then
the 32x32 image as 1024 red, 1024 green and 1024 blue bytes.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import os
import tarfile
import threading

import numpy as np

IMAGE_BYTES = 3 * 32 * 32
LAYOUT = {
    "cifar10": {
        "prefix": "cifar-10-batches-bin/",
        "train": [f"data_batch_{i}.bin" for i in range(1, 6)],
        "test": ["test_batch.bin"],
        "names": {"batches.meta.txt": 10},
        "archive": "cifar-10-binary.tar.gz",
    },
    "cifar100": {
        "prefix": "cifar-100-binary/",
        "train": ["train.bin"],
        "test": ["test.bin"],
        "names": {"coarse_label_names.txt": 20, "fine_label_names.txt": 100},
        "archive": "cifar-100-binary.tar.gz",
    },
}


def records(name: str, images: np.ndarray, labels: np.ndarray) -> bytes:
    """The binary records of (N, 32, 32, 3) `images` and their labels (CIFAR-100: coarse = fine // 5)."""
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), IMAGE_BYTES)  # red, green, blue planes
    label_bytes = labels[:, None] if name == "cifar10" else np.stack([labels // 5, labels], axis=1)
    return np.concatenate([label_bytes.astype(np.uint8), planes], axis=1).tobytes()


def _add(archive: tarfile.TarFile, member: str, content: bytes) -> None:
    info = tarfile.TarInfo(member)
    info.size = len(content)
    archive.addfile(info, io.BytesIO(content))


def write_archive(name: str, path, train: int = 40, test: int = 20) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    layout = LAYOUT[name]
    num_classes = max(layout["names"].values())
    rng = np.random.default_rng(0)
    content = {
        split: (rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8), np.arange(count) % num_classes)
        for split, count in (("train", train), ("test", test))
    }
    with tarfile.open(path, "w:gz") as archive:
        for file_name, count in layout["names"].items():
            _add(archive, layout["prefix"] + file_name, "".join(f"class_{i}\n" for i in range(count)).encode())
        for split, (images, labels) in content.items():
            # In consecutive parts over the split's files, as the real batches are.
            parts = np.array_split(np.arange(len(labels)), len(layout[split]))
            for file_name, part in zip(layout[split], parts):
                _add(archive, layout["prefix"] + file_name, records(name, images[part], labels[part]))
    return content


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


@contextlib.contextmanager
def serve(directory):
    """A real HTTP server on 127.0.0.1 (a free port) over `directory`, in a thread."""
    handler = functools.partial(_QuietHandler, directory=os.fspath(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def prepare_tiny_cifar(
    name: str, data_dir, train: int = 40, test: int = 20
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from resnet_identity import prepare

    served = os.path.join(os.fspath(data_dir), "served")
    os.makedirs(served, exist_ok=True)
    content = write_archive(name, os.path.join(served, LAYOUT[name]["archive"]), train, test)
    with serve(served) as url:
        prepare.prepare_from(name, os.fspath(data_dir), url + LAYOUT[name]["archive"])
    return content
