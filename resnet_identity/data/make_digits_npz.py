"""One-off script that writes ``digits.npz``, the embedded ``digits`` dataset.

The source is scikit-learn's bundled copy of the UCI optical handwritten
digits (1797 images, 8x8 pixels, 17 grey levels 0..16, 10 classes). The
package must not need scikit-learn at run time, so this script is run once by
a maintainer and its output is committed next to it:

    python -m resnet_identity.data.make_digits_npz

The file holds:
  * ``images``  uint8 [1797, 8, 8]: grey levels rescaled 0..16 -> 0..255;
  * ``labels``  uint8 [1797];
  * ``is_test`` bool [1797]: the fixed train/test split.

The split is stored rather than recomputed at load time because it must stay
fixed forever, and NumPy does not promise that a seeded ``Generator`` keeps
its stream across releases. It is ``train_test_split(test_size=0.2,
stratify=labels, random_state=0)``: 1437 train and 360 test images, 35 to 37
per class in test.
"""

import pathlib

import numpy as np

OUTPUT = pathlib.Path(__file__).with_name("digits.npz")


def main() -> None:
    # Imported here: scikit-learn is a maintainer-only dependency.
    from sklearn import datasets, model_selection

    digits = datasets.load_digits()
    levels = digits.images  # float64 in 0..16
    images = np.round(levels * (255.0 / 16.0)).astype(np.uint8)
    labels = digits.target.astype(np.uint8)
    _, test_indices = model_selection.train_test_split(
        np.arange(len(labels)), test_size=0.2, stratify=labels, random_state=0
    )
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test_indices] = True
    np.savez_compressed(OUTPUT, images=images, labels=labels, is_test=is_test)
    print(f"wrote {OUTPUT}: {len(labels)} images, {int((~is_test).sum())} train / {int(is_test.sum())} test")


if __name__ == "__main__":
    main()
