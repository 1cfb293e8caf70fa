"""Segment your own images from one labelled example.

    python -m meta_drn_tf.segment --model=runs/quickstart --support=cat1.jpg --support_mask=cat1.png \\
        --images='photos/*.jpg' --out=masks/ [--threshold=0.5] [--overlay]

--model is a training run or an exported SavedModel (a version folder, or
the model_base_path: its newest version). The network adapts once to the
labelled example(s) (repeat --support/--support_mask for k-shot), then each
image gets `OUT/<name>.png`: its mask at the image's own size, 0 = background
and 255 = object (the FSS-1000 encoding). --overlay adds
`OUT/<name>_overlay.png`: the example with its mask in green beside the image
with the predicted mask in red. Images are processed in batches of
--batch_size images of one size, so memory stays bounded.
"""

from __future__ import annotations

import glob
import os

from absl import flags

from meta_drn_tf import cli

flags.DEFINE_string("model", None, "A training run's directory or an exported SavedModel.", required=True)
flags.DEFINE_multi_string("support", None, "A labelled example image (repeat for k-shot).", required=True)
flags.DEFINE_multi_string("support_mask", None, "Its mask, in the same order as --support: any image whose "
                          "object pixels are brighter than half its brightest value (0/255, 0/1, palette...).",
                          required=True)
flags.DEFINE_multi_string("images", None, "Images to segment: files, folders or quoted glob patterns "
                          "(e.g. 'photos/*.jpg'); repeat for more.", required=True)
flags.DEFINE_string("out", None, "Folder for the masks (created if needed).", required=True)
flags.DEFINE_float("threshold", 0.5, "Foreground where the probability exceeds this (the paper: 0.5 or 0.35).")
flags.DEFINE_bool("overlay", False, "Also write <name>_overlay.png pictures.")
flags.DEFINE_integer("batch_size", 8, "Images per forward pass (bounds memory).")
flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "With a training run: which checkpoint.")
flags.DEFINE_enum("kernels", "auto", ["auto", "stock", "cpu"], "With a training run: kernel forms (auto: cpu on a "
                  "CPU, stock on a GPU). A SavedModel keeps the forms it was exported with.")
flags.register_validator("threshold", lambda t: 0 < t < 1, message="must lie strictly between 0 and 1")
flags.register_validator("batch_size", lambda b: b >= 1, message="must be at least 1")
FLAGS = flags.FLAGS


def image_paths(patterns: list[str]) -> list[str]:
    """Image files named by `patterns` (files, folders, globs), sorted within each, duplicates removed."""
    import cv2

    from meta_drn_tf.errors import ConfigError

    paths = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = [os.path.join(pattern, f) for f in sorted(os.listdir(pattern))]
            found = [p for p in found if os.path.isfile(p) and cv2.haveImageReader(p)]
        else:
            found = sorted(glob.glob(pattern))
        if not found:
            raise ConfigError(f"--images={pattern}: matches no image file")
        paths += [p for p in found if p not in paths]
    return paths


def output_names(paths: list[str]) -> list[str]:
    """`<name>` of each image (its file name without extension); two images may not share one."""
    from meta_drn_tf.errors import ConfigError

    names, seen = [], {}
    for path in paths:
        name = os.path.splitext(os.path.basename(path))[0]
        if name in seen:
            raise ConfigError(f"--images: {seen[name]} and {path} would both write {name}.png; "
                              "segment them into different --out folders")
        seen[name] = path
        names.append(name)
    return names


def read_support(images: list[str], masks: list[str]):
    """The labelled examples as uint8 arrays, resized to the first example's size."""
    import cv2
    import numpy as np

    from meta_drn_tf.data.fss1000 import read_binary_mask, read_rgb
    from meta_drn_tf.errors import ConfigError, DataError

    if len(images) != len(masks):
        raise ConfigError(f"{len(images)} --support image(s) but {len(masks)} --support_mask(s): give one mask each")
    pairs = []
    for image_path, mask_path in zip(images, masks):
        image = read_rgb(image_path)
        mask = read_binary_mask(mask_path, image.shape[:2])
        if not mask.any():
            raise DataError(f"{mask_path}: the mask is empty; mark the object in the example with bright pixels")
        if pairs and image.shape != pairs[0][0].shape:
            h, w = pairs[0][0].shape[:2]
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
            mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
        pairs.append((image, mask))
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def batches_of_one_size(paths: list[str], batch_size: int):
    """(indices, uint8 images) batches of consecutive images that share a size, read as they are needed."""
    import numpy as np

    from meta_drn_tf.data.fss1000 import read_rgb

    indices, images = [], []
    for i, path in enumerate(paths):
        image = read_rgb(path)
        if images and (image.shape != images[0].shape or len(images) == batch_size):
            yield indices, np.stack(images)
            indices, images = [], []
        indices.append(i)
        images.append(image)
    if images:
        yield indices, np.stack(images)


def main(argv):
    del argv
    import keras
    import numpy as np

    from meta_drn_tf import visualize
    from meta_drn_tf.segmenter import Segmenter

    # Everything the user gave is checked before the model loads.
    support_images, support_masks = read_support(FLAGS.support, FLAGS.support_mask)
    paths = image_paths(FLAGS.images)
    names = output_names(paths)
    segmenter = Segmenter.load(FLAGS.model, FLAGS.checkpoint, kernels=FLAGS.kernels)
    print(f"Adapting {segmenter.description} to {len(support_images)} example(s); segmenting {len(paths)} image(s)")
    segmenter.adapt(support_images, support_masks)
    os.makedirs(FLAGS.out, exist_ok=True)
    support_tile = visualize.overlay(support_images[0], support_masks[0], visualize.GREEN)
    bar = keras.utils.Progbar(len(paths), unit_name="image")
    for indices, images in batches_of_one_size(paths, FLAGS.batch_size):
        masks = segmenter.segment(images) > FLAGS.threshold
        for i, image, mask in zip(indices, images, masks):
            visualize.save_png(os.path.join(FLAGS.out, f"{names[i]}.png"), (mask * 255).astype(np.uint8))
            if FLAGS.overlay:
                picture = visualize.side_by_side([visualize.overlay(image, mask, visualize.RED), support_tile])
                visualize.save_png(os.path.join(FLAGS.out, f"{names[i]}_overlay.png"), picture)
        bar.add(len(indices))
    print(f"Wrote {len(paths)} mask(s) to {FLAGS.out}")


if __name__ == "__main__":
    cli.run(main)
