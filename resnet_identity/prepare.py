"""Prepare a TFDS dataset (cifar10, cifar100, imagenet2012) for training, with or without network.

  python -m resnet_identity.prepare cifar10 [--data_dir=DIR or gs://BUCKET/DIR]
  python -m resnet_identity.prepare cifar100 --archive=cifar-100-binary.tar.gz
  python -m resnet_identity.prepare imagenet2012 --archive=ILSVRC2012_img_train.tar --archive=ILSVRC2012_img_val.tar

Without --archive, TFDS downloads CIFAR's official archive and checks it against the checksum
TFDS records for it. --archive=FILE prepares from that archive instead (a machine without
internet): its format is checked first (a tar holding the batches and label names TFDS's
builder reads, whole records, nothing truncated), then TFDS's builder reads it through its
download manager, which records its checksum as TFDS does for a new file; a file that is not
byte-identical to the official archive is said so. ImageNet cannot be downloaded: its two
archives (or a folder holding them) are placed in `<data_dir>/downloads/manual/`, where TFDS's
builder reads them. --data_dir defaults to TFDS's ($TFDS_DATA_DIR, else ~/tensorflow_datasets),
the directory training reads (`config.data_dir`); on a gs:// one, CIFAR is prepared on local
disk and then uploaded (docs/datasets.md).
"""

from __future__ import annotations

import os
import shutil
import sys
import tarfile
import tempfile
import zlib

from absl import flags

from resnet_identity import cli
from resnet_identity.data import tfds_access
from resnet_identity.runs.files import as_path, is_local

FLAGS = flags.FLAGS

DATASETS = ("cifar10", "cifar100", "imagenet2012")
# What TFDS's builder reads from each CIFAR archive (tensorflow_datasets/image_classification/cifar.py).
CIFAR_ARCHIVES = {
    "cifar10": {
        "file": "cifar-10-binary.tar.gz",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        "folder": "cifar-10-batches-bin/",
        "batches": ("data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin")
        + ("test_batch.bin",),
        "label_files": ("batches.meta.txt",),
    },
    "cifar100": {
        "file": "cifar-100-binary.tar.gz",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
        "folder": "cifar-100-binary/",
        "batches": ("train.bin", "test.bin"),
        "label_files": ("coarse_label_names.txt", "fine_label_names.txt"),
    },
}
IMAGE_BYTES = 3 * 32 * 32


class ArchiveError(cli.UserError):
    """An archive that is not what its dataset's builder reads; the message says why."""


def define_flags() -> None:
    """The command's flags, defined when it runs rather than at import, so that code importing
    several commands (the tests do) defines no flag twice."""
    flags.DEFINE_multi_string(
        "archive",
        None,
        "Prepare from archives you have instead of downloading: CIFAR's official binary tarball, or "
        "ImageNet's two tars (repeat the flag, or name the folder holding them).",
    )
    flags.DEFINE_string("data_dir", None, "TFDS data directory, local or gs:// (default: TFDS's).")


def record_bytes(name: str) -> int:
    """One CIFAR record: the label byte(s) (CIFAR-100: coarse and fine), then the image."""
    return (1 if name == "cifar10" else 2) + IMAGE_BYTES


def check_cifar_archive(name: str, path: str) -> int:
    """Reads the whole archive once; returns its number of records.

    Raises:
      ArchiveError: not a (gzipped) tar, truncated or damaged, another dataset's archive,
        members missing, or a batch that is not whole records.
    """
    layout = CIFAR_ARCHIVES[name]
    record = record_bytes(name)
    sizes = {}
    try:
        with as_path(path).open("rb") as file, tarfile.open(fileobj=file, mode="r:*") as archive:
            for member in archive:
                if member.isfile():
                    # Read to the end: a truncated or corrupted archive fails here, not in TFDS.
                    sizes[member.name] = len(archive.extractfile(member).read())
    except FileNotFoundError:
        raise ArchiveError(f"--archive={path} does not exist.") from None
    except IsADirectoryError:
        raise ArchiveError(f"--archive={path} is a folder; give {layout['file']} itself.") from None
    except (tarfile.ReadError, EOFError, zlib.error, OSError) as error:
        if isinstance(error, EOFError) or "unexpected end of data" in str(error):
            what = "truncated (it ends before its last member does)"
        elif sizes or isinstance(error, zlib.error):
            what = f"damaged ({_first_line(error)})"
        else:
            what = "not a tar archive (gzipped or not)"
        raise ArchiveError(f"--archive={path} is {what}. Download {layout['url']} again and rerun.") from None
    for other, other_layout in CIFAR_ARCHIVES.items():
        if other != name and any(member.startswith(other_layout["folder"]) for member in sizes):
            raise ArchiveError(
                f"--archive={path} is {other}'s archive ({other_layout['file']}), not {name}'s; run "
                f"`python -m resnet_identity.prepare {other} --archive={path}`, or give {layout['file']}."
            )
    if any(member.startswith(("cifar-10-batches-py/", "cifar-100-python/")) for member in sizes):
        raise ArchiveError(
            f"--archive={path} is CIFAR's Python version; TFDS reads the binary one, {layout['file']} "
            f"from {layout['url']}."
        )
    wanted = [layout["folder"] + member for member in layout["batches"] + layout["label_files"]]
    missing = [member for member in wanted if member not in sizes]
    if missing:
        listed = ", ".join(missing[:2]) + (f" and {len(missing) - 2} more" if len(missing) > 2 else "")
        raise ArchiveError(
            f"--archive={path} lacks {listed}: it is not {name}'s binary archive "
            f"({layout['file']} from {layout['url']})."
        )
    partial = [m for m in wanted[: len(layout["batches"])] if sizes[m] == 0 or sizes[m] % record]
    if partial:
        raise ArchiveError(
            f"--archive={path}: {', '.join(partial)} is not whole {record}-byte records of {name}; "
            f"download {layout['url']} again."
        )
    return sum(sizes[m] for m in wanted[: len(layout["batches"])]) // record


def _checksums_file(name: str, data_dir: str):
    return as_path(data_dir) / "downloads" / f"{name}_checksums.tsv"


def cifar_builder_from(name: str, data_dir: str, url: str):
    """TFDS's own builder for `name` whose archive comes from `url` (a file, or an http(s)
    address) instead of CIFAR's site; it prepares the same dataset into `data_dir`.

    TFDS keys checksums by URL and records a new file's in the builder's checksums file
    (`tfds build --register_checksums`); this builder's is `<data_dir>/downloads/<name>_checksums.tsv`.
    """
    _, tfds = tfds_access.import_tfds()
    official = tfds.builder_cls(name)

    class FromUrl(official, skip_registration=True):
        _checksums_path = _checksums_file(name, data_dir)

        @property
        def _cifar_info(self):
            return super()._cifar_info._replace(url=url)

    FromUrl.name = official.name  # the same dataset, in <data_dir>/<name>/<version>: what training reads
    return FromUrl(data_dir=data_dir)


def prepare_from(name: str, data_dir: str, url: str) -> str | None:
    """Prepares CIFAR `name` into `data_dir` from the archive at `url` (see `cifar_builder_from`);
    returns a note when that archive is not byte-identical to the official one."""
    # First: as_path chooses the Cloud Storage client before TFDS's first path operation (runs/files.py).
    checksums = _checksums_file(name, data_dir)
    _, tfds = tfds_access.import_tfds()
    # The official archive's size and checksum, as TFDS records them for CIFAR's URL.
    official = tfds.builder_cls(name).url_infos[CIFAR_ARCHIVES[name]["url"]]
    checksums.parent.mkdir(parents=True, exist_ok=True)
    builder = cifar_builder_from(name, data_dir, url)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(register_checksums=True))
    got = tfds.download.checksums.load_url_infos(checksums)[url]
    if (got.size, got.checksum) == (official.size, official.checksum):
        return None
    return (
        f"note: {url} is not byte-identical to the official {CIFAR_ARCHIVES[name]['file']} "
        f"({int(got.size):,} bytes, sha256 {got.checksum[:12]}...; the official one has "
        f"{int(official.size):,} bytes, sha256 {official.checksum[:12]}...). Its records are whole, and "
        "it was prepared as given."
    )


def prepare_cifar(name: str, data_dir: str, archive: str | None) -> str | None:
    """Downloads CIFAR (`archive` None) or reads `archive`, and prepares it into `data_dir`; returns
    `prepare_from`'s note.

    A gs:// `data_dir` is prepared on local disk first, then uploaded with the client every run
    file uses (runs/files.py): TFDS's download manager would write the archive through TensorFlow's own
    Cloud Storage client.
    """
    stage = data_dir if is_local(data_dir) else tempfile.mkdtemp(prefix=f"prepare-{name}-")
    try:
        note = download_cifar(name, stage) if archive is None else prepare_from(name, stage, archive)
        if stage != data_dir:
            _upload(name, stage, data_dir)
    finally:
        if stage != data_dir:
            shutil.rmtree(stage, ignore_errors=True)
    return note


def _upload(name: str, stage: str, data_dir: str) -> None:
    """Copies the prepared `<stage>/<name>/<version>` to `data_dir`, dataset_info.json last: TFDS
    takes a version folder holding it for prepared, so an interrupted upload is not taken for one."""
    _, tfds = tfds_access.import_tfds()
    prepared = as_path(tfds.builder(name, data_dir=stage).data_dir)
    target = as_path(data_dir) / prepared.relative_to(as_path(stage))
    for file in sorted(prepared.iterdir(), key=lambda file: file.name == "dataset_info.json"):
        file.copy(target / file.name, overwrite=True)


def download_cifar(name: str, data_dir: str) -> None:
    """Downloads CIFAR's official archive through TFDS, which checks its checksum, and prepares it."""
    _, tfds = tfds_access.import_tfds()
    url = CIFAR_ARCHIVES[name]["url"]
    offline = (
        f"Without internet, fetch {url} elsewhere and run "
        f"`python -m resnet_identity.prepare {name} --archive={CIFAR_ARCHIVES[name]['file']}`."
    )
    # Checked first: offline, TFDS's downloader retries for minutes before it fails.
    unreachable = tfds_access.unreachable(url)
    if unreachable:
        raise cli.UserError(f"cannot download {name}: {unreachable}. {offline}")
    try:
        tfds.builder(name, data_dir=data_dir).download_and_prepare()
    except Exception as error:  # noqa: BLE001 - any failure to download gets the same remedy
        raise cli.UserError(
            f"could not download {name} ({type(error).__name__}: {_first_line(error)}). {offline}"
        ) from error


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0]


def imagenet_archives(archives: list[str]) -> dict[str, str]:
    """{file name: path} of ImageNet's two tars, from files or a folder holding them."""
    found = {}
    for given in archives:
        path = as_path(given)
        if path.is_dir():
            found.update(
                {name: os.fspath(path / name) for name in tfds_access.IMAGENET_ARCHIVES if (path / name).exists()}
            )
        elif not path.exists():
            raise ArchiveError(f"--archive={given} does not exist.")
        elif path.name in tfds_access.IMAGENET_ARCHIVES:
            found[path.name] = os.fspath(path)
        else:
            raise ArchiveError(
                f"--archive={given} is not one of ImageNet's archives ({', '.join(tfds_access.IMAGENET_ARCHIVES)})."
            )
    missing = [name for name in tfds_access.IMAGENET_ARCHIVES if name not in found]
    if missing:
        raise ArchiveError(
            f"{' and '.join(missing)} not given; --archive names both ImageNet archives, or the folder holding "
            "them (register at https://image-net.org/download-images to download them)."
        )
    for name, path in found.items():
        _check_imagenet_tar(name, path)
    return found


# The first member of each ImageNet tar, as TFDS's builder reads them: one tar per class
# (n01440764.tar, ...) in the training tar; the images themselves in the validation tar.
_IMAGENET_MEMBERS = {
    "ILSVRC2012_img_train.tar": (".tar", "one tar per class, such as n01440764.tar"),
    "ILSVRC2012_img_val.tar": (".JPEG", "the validation images, ILSVRC2012_val_00000001.JPEG ..."),
}


def _check_imagenet_tar(name: str, path: str) -> None:
    """Reads the first member's header only: the training tar is ~138 GB."""
    suffix, holds = _IMAGENET_MEMBERS[name]
    with as_path(path).open("rb") as file:
        try:
            first = tarfile.open(fileobj=file, mode="r:").next()
        except (tarfile.ReadError, EOFError):
            raise ArchiveError(f"{path} is not a tar archive, or is damaged; download {name} again.") from None
    if first is None or not first.name.endswith(suffix):
        found = f"its first member is {first.name!r}" if first is not None else "it is empty"
        raise ArchiveError(f"{path} is not ImageNet's {name}, which holds {holds}: {found}.")


def _place(archive, target) -> None:
    """Puts `archive` at `target`: a symbolic link on a local disk (the train tar is ~138 GB),
    else a copy."""
    if is_local(target) and is_local(archive):
        if os.path.lexists(target) and os.path.realpath(target) == os.path.realpath(archive):
            return
        if os.path.lexists(target):
            os.unlink(target)
        os.symlink(archive, target)
    elif not (target.exists() and target.stat().length == archive.stat().length):
        archive.copy(target, overwrite=True)


def prepare_imagenet(data_dir: str, archives: dict[str, str]) -> str:
    """Places `archives` ({file name: path}) in a manual dir, and has TFDS's builder prepare from it.

    The manual dir is TFDS's `<data_dir>/downloads/manual`, except for local archives and a gs://
    data_dir: then a local folder of links, so that ~145 GB are not uploaded only to be read once.
    """
    _, tfds = tfds_access.import_tfds()
    local_links = bool(archives) and not is_local(data_dir) and all(map(is_local, archives.values()))
    manual_dir = as_path(tempfile.mkdtemp(prefix="imagenet-manual-") if local_links else data_dir)
    if not local_links:
        manual_dir = manual_dir / "downloads" / "manual"
    try:
        manual_dir.mkdir(parents=True, exist_ok=True)
        for name, path in archives.items():
            _place(as_path(path), manual_dir / name)
        missing = [name for name in tfds_access.IMAGENET_ARCHIVES if not (manual_dir / name).exists()]
        if missing:
            raise cli.UserError(
                f"ImageNet cannot be downloaded, and {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                f"not in {manual_dir}/: give both archives, --archive=ILSVRC2012_img_train.tar "
                "--archive=ILSVRC2012_img_val.tar (or the folder holding them); they come from "
                "https://image-net.org/download-images, after registering."
            )
        config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
        try:
            tfds.builder("imagenet2012", data_dir=data_dir).download_and_prepare(download_config=config)
        except Exception as error:  # noqa: BLE001 - TFDS reports a damaged tar in many ways
            raise cli.UserError(
                f"TFDS could not prepare imagenet2012 from {manual_dir} ({type(error).__name__}: "
                f"{_first_line(error)}). Check that both archives are complete (download them again if not)"
                f"{'' if is_local(data_dir) else f' and that {data_dir} is writable from here'}, and rerun."
            ) from error
    finally:
        if local_links:
            shutil.rmtree(manual_dir, ignore_errors=True)
    return f"Prepared imagenet2012 in {data_dir}."


def prepare(argv: list[str]) -> str:
    if len(argv) != 2 or argv[1] not in DATASETS:
        raise cli.UserError(f"give one dataset to prepare, one of {', '.join(DATASETS)}; got {argv[1:] or 'none'}.")
    name, archives = argv[1], FLAGS.archive or []
    if name != "imagenet2012" and len(archives) > 1:
        raise cli.UserError(f"{name} is prepared from one archive ({CIFAR_ARCHIVES[name]['file']}).")
    data_dir = tfds_access.resolve_data_dir(FLAGS.data_dir)
    # A bad archive is reported before TensorFlow's import, which takes seconds.
    imagenet, records = {}, None
    if name == "imagenet2012":
        imagenet = imagenet_archives(archives) if archives else {}
    else:
        records = check_cifar_archive(name, archives[0]) if archives else None
    _, tfds = tfds_access.import_tfds()
    if not sys.stderr.isatty():
        # TFDS's bars are nested and redraw with cursor moves: tidy on a terminal, noise in a log file.
        tfds.disable_progress_bar()
    if tfds.builder(name, data_dir=data_dir).is_prepared():
        return f"{name} is already prepared in {data_dir}."
    if name == "imagenet2012":
        return prepare_imagenet(data_dir, imagenet)
    note = prepare_cifar(name, data_dir, os.fspath(as_path(archives[0])) if archives else None)
    if note:
        print(note, file=sys.stderr, flush=True)
    if not archives:
        return f"Prepared {name} in {data_dir}."
    return f"Prepared {name} in {data_dir} from {archives[0]} ({records:,} images)."


def main(argv: list[str]) -> None:
    print(prepare(argv), flush=True)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
