"""Image files as the networks take them: uint8 RGB [H, W, 3], from every pixel mode Pillow opens.

The values are those of the training pipeline's decoder (TensorFlow's `decode_image`,
`imagenet_preprocess.decode`), so that an image predicts as its twin in a dataset would:

- 16-bit grey (`I;16*`): the high byte, v >> 8, as TensorFlow converts 16-bit PNGs (Pillow's
  own `convert("RGB")` clips every value above 255 to white instead). 16-bit RGB PNGs Pillow
  already opens as 8-bit RGB, by their high bytes too.
- 32-bit integer grey (`I`): scaled from its type's range, [0, 2^31 - 1], as TensorFlow's
  `convert_image_dtype` scales int32; negative values are black.
- 32-bit float grey (`F`): [0, 1] to [0, 255], the float image convention of the same function;
  values outside are clipped.
- transparency (RGBA, LA, PA, palettes with a transparent entry): dropped, keeping each pixel's
  colour, as `decode_image(channels=3)` drops it.
- palette, bilevel, CMYK, YCbCr, LAB and HSV images: Pillow's conversion to RGB.
- a JPEG's EXIF orientation is applied, so the image is upright as a viewer shows it.
- an animated image (GIF, APNG, WebP): its first frame, with a note saying so.

Any other mode is refused with `ImageError`.
"""

from __future__ import annotations

import io

import numpy as np

from resnet_identity.runs.files import as_path

# Modes Pillow converts to RGB itself, with the colour each pixel shows.
CONVERTED_BY_PILLOW = ("1", "L", "P", "LA", "PA", "RGB", "RGBA", "RGBX", "RGBa", "La", "CMYK", "YCbCr", "LAB", "HSV")
SIXTEEN_BIT_GREY = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageError(ValueError):
    """An image that is missing or cannot be decoded; the message says what to do."""


def read_image(path: str) -> tuple[np.ndarray, str | None]:
    """(uint8 RGB [H, W, 3], a note for the user or None) of an image file (module docstring);
    raises `ImageError` saying what is wrong."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    file = as_path(path)
    if not file.exists():
        raise ImageError(f"No such image: {path}.")
    try:
        with Image.open(io.BytesIO(file.read_bytes())) as image:
            frames = getattr(image, "n_frames", 1)
            note = f"{path} is animated ({frames} frames); the first is used." if frames > 1 else None
            return to_rgb(ImageOps.exif_transpose(image), path), note
    except UnidentifiedImageError as e:
        raise ImageError(f"Cannot read {path}: not an image format Pillow decodes (JPEG or PNG expected).") from e
    except OSError as e:  # a truncated or damaged file
        raise ImageError(f"Cannot read {path} as an image: {e}.") from e


def to_rgb(image, path: str = "the image") -> np.ndarray:
    """uint8 RGB [H, W, 3] of a Pillow image of any mode the module docstring lists."""
    if image.mode in SIXTEEN_BIT_GREY:
        grey = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
    elif image.mode == "I":
        grey = (np.clip(np.asarray(image, np.int64), 0, None) >> 23).astype(np.uint8)
    elif image.mode == "F":
        grey = np.round(np.clip(np.nan_to_num(np.asarray(image, np.float64)), 0.0, 1.0) * 255.0).astype(np.uint8)
    elif image.mode in CONVERTED_BY_PILLOW:
        if image.mode == "P" and "transparency" in image.info:  # Pillow warns unless it goes through RGBA
            image = image.convert("RGBA")
        return np.asarray(image.convert("RGB"))
    else:
        raise ImageError(
            f"Cannot read {path}: its pixel mode {image.mode!r} is not one this program decodes "
            f"(it reads {', '.join(CONVERTED_BY_PILLOW + SIXTEEN_BIT_GREY)}, I and F). Save it as an RGB PNG or JPEG."
        )
    return np.repeat(grey[..., None], 3, axis=-1)
