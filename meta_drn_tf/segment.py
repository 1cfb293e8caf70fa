"""Segment your own images from one labelled example.

    python -m meta_drn_tf.segment --model=runs/quickstart --support=cat1.jpg --support_mask=cat1.png \\
        --images='photos/*.jpg' --out=masks/ [--threshold=0.5] [--overlay] [--save_tflite=cat.tflite]

--model is a training run or an exported SavedModel (a version folder, or
the model_base_path: its newest version). The network adapts once to the
labelled example(s) (repeat --support/--support_mask for k-shot), then each
image gets `OUT/<name>.png`: its mask at the image's own size, 0 = background
and 255 = object (the FSS-1000 encoding). --overlay adds
`OUT/<name>_overlay.png`: the example with its mask in green beside the image
with the predicted mask in red. Images are processed in batches of
--batch_size images of one size, so memory stays bounded.

--save_tflite also writes the adapted network as a TensorFlow Lite file for
phones (`Segmenter.export_tflite`; --tflite_quantize=none|float16|int8|int16x8).

Every input is checked before the network loads: all unreadable images are
listed at once (exit 5), or left out and named with --skip_bad_files. Each PNG
is written atomically (never half-written), so an interrupted folder is
continued with --skip_existing, which leaves out the images whose files are
already there. Outputs that would overwrite an input are refused.
"""

from __future__ import annotations

import glob
import os

from absl import flags

from meta_drn_tf import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The flags of `python -m meta_drn_tf.segment`."""
    from meta_drn_tf.network.kernels import KERNEL_CHOICES
    from meta_drn_tf.serving.tflite import QUANTIZATIONS

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
    flags.DEFINE_bool("skip_bad_files", False, "Segment the readable images when some cannot be decoded (they are "
                      "listed and counted); default: stop and list them.")
    flags.DEFINE_bool("skip_existing", False, "Leave out the images whose mask (and overlay, with --overlay) is "
                      "already in --out: continues an interrupted run.")
    flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "With a training run: which checkpoint.")
    flags.DEFINE_enum("kernels", "auto", KERNEL_CHOICES, "With a training run: kernel forms (auto: cpu on a "
                      "CPU, stock on a GPU). A SavedModel keeps the forms it was exported with.")
    flags.DEFINE_string("save_tflite", None, "Also write the adapted network as a TensorFlow Lite file: one uint8 "
                        "image at the training size in, probabilities out (for phones and edge devices).")
    flags.DEFINE_enum("tflite_quantize", "none", QUANTIZATIONS, "The TensorFlow Lite file's numbers: none "
                      "(float32), float16 (weights: half the size), int8 (weights: a quarter, for CPUs) or "
                      "int16x8 (integer throughout, calibrated on the example: for integer-only NPUs).")
    cli.check_paths(model="path", support="file", support_mask="file", out="new_folder", save_tflite="new_file")
    flags.register_validator("threshold", lambda t: 0 < t < 1, message="must lie strictly between 0 and 1")
    flags.register_validator("batch_size", lambda b: b >= 1, message="must be at least 1")


def image_paths(patterns: list[str]) -> list[str]:
    """Image files named by `patterns` (files, folders, globs), sorted within each, duplicates removed;
    a PNG beside a photo of the same name (FSS-1000's layout: 1.jpg and its mask 1.png) is that
    photo's mask, not a photo."""
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
    masks = masks_beside_photos(paths)
    if masks:
        print(f"Left out {len(masks)} mask(s) beside their photos (e.g. {masks[0]}): FSS-1000's layout")
    left_out = set(masks)
    return [p for p in paths if p not in left_out]


def masks_beside_photos(paths: list[str]) -> list[str]:
    """The PNGs among `paths` that share their folder and name with another of them that is not a PNG."""
    stems = {os.path.splitext(p)[0] for p in paths if os.path.splitext(p)[1].lower() != ".png"}
    return [p for p in paths if os.path.splitext(p)[1].lower() == ".png" and os.path.splitext(p)[0] in stems]


def output_names(paths: list[str], overlay: bool = False) -> list[str]:
    """`<name>` of each image: its file name without extension, or where two outputs would collide, its
    path relative to the images' common folder (`paths.unique_stems`)."""
    from meta_drn_tf.paths import unique_stems

    return unique_stems(paths, ("", "_overlay") if overlay else ("",))


def read_support(images: list[str], masks: list[str]):
    """The labelled examples as uint8 arrays, resized to the first example's size."""
    from meta_drn_tf.data.fss1000 import read_binary_mask, read_rgb
    from meta_drn_tf.errors import ConfigError, DataError
    from meta_drn_tf.serving.segmenter import stack_examples

    if len(images) != len(masks):
        raise ConfigError(f"{len(images)} --support image(s) but {len(masks)} --support_mask(s): give one mask each")
    pictures, outlines = [], []
    for image_path, mask_path in zip(images, masks):
        pictures.append(read_rgb(image_path))
        outlines.append(read_binary_mask(mask_path, pictures[-1].shape[:2]))
        if not outlines[-1].any():
            raise DataError(f"{mask_path}: the mask is empty; mark the object in the example with bright pixels")
    return stack_examples(pictures, outlines)


def output_files(names: list[str], out: str, overlay: bool) -> list[list[str]]:
    """The files each image gets in `out`: its mask, and its overlay with `overlay`."""
    return [[os.path.join(out, f"{n}.png")] + ([os.path.join(out, f"{n}_overlay.png")] if overlay else [])
            for n in names]


def refuse_overwriting_inputs(inputs: list[str], outputs: list[list[str]]) -> None:
    """ConfigError when an output file would replace one of the command's input files."""
    from meta_drn_tf.errors import ConfigError

    taken = {os.path.realpath(p): p for p in inputs}
    for path in (p for files in outputs for p in files):
        if os.path.realpath(path) in taken:
            raise ConfigError(f"--out {FLAGS.out}: writing {path} would overwrite the input "
                              f"{taken[os.path.realpath(path)]}; choose another --out folder")


def unreadable(paths: list[str]) -> dict[int, str]:
    """{index: why} of the images that cannot be decoded, checked in parallel with a progress bar."""
    import cv2

    from meta_drn_tf.data.fss1000 import decode_all, decode_image
    from meta_drn_tf.errors import DataError

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # each bad file is reported below, once

    def problem(path: str) -> str | None:
        # A reduced decode reads the whole file (truncation and corruption show) at a fraction of
        # the cost of a full one (JPEGs decode scaled in the DCT): the images are decoded again later.
        try:
            decode_image(path, cv2.IMREAD_REDUCED_GRAYSCALE_8)
        except DataError as e:
            return str(e)
        return None

    problems = decode_all(problem, paths, f"Checking {len(paths)} image(s)", progress=len(paths) > 1)
    return {i: why for i, why in enumerate(problems) if why}


def _usable_images(paths: list[str], outputs: list[list[str]]) -> tuple[list[int], int, list[str]]:
    """(indices to segment, how many already have their files, problems of the skipped bad files)."""
    from meta_drn_tf.data.fss1000 import problem_list
    from meta_drn_tf.errors import DataError

    todo = [i for i in range(len(paths)) if not (FLAGS.skip_existing and all(map(os.path.isfile, outputs[i])))]
    existing = len(paths) - len(todo)
    if existing:
        print(f"{existing} image(s) already segmented (--skip_existing)")
    bad = {todo[i]: why for i, why in unreadable([paths[i] for i in todo]).items()}
    if bad and not FLAGS.skip_bad_files:
        raise DataError(problem_list(f"--images: {len(bad)} image(s) cannot be read (fix or remove them, or pass "
                                     "--skip_bad_files to segment the rest):", list(bad.values())))
    return [i for i in todo if i not in bad], existing, list(bad.values())


def batches_of_one_size(paths: list[str], indices: list[int], batch_size: int):
    """(indices, uint8 images) batches of consecutive images of `indices` that share a size, read as needed."""
    import numpy as np

    from meta_drn_tf.data.fss1000 import read_rgb

    batch, images = [], []
    for i in indices:
        image = read_rgb(paths[i])
        if images and (image.shape != images[0].shape or len(images) == batch_size):
            yield batch, np.stack(images)
            batch, images = [], []
        batch.append(i)
        images.append(image)
    if images:
        yield batch, np.stack(images)


def _write_masks(segmenter, paths: list[str], todo: list[int], outputs: list[list[str]], support_tile) -> None:
    import numpy as np

    from meta_drn_tf import progress, visualize

    for folder in {os.path.dirname(path) for files in outputs for path in files}:
        os.makedirs(folder, exist_ok=True)  # names that keep their subfolder (`paths.unique_stems`)
    bar = progress.bar(len(todo), unit_name="image")
    for indices, images in batches_of_one_size(paths, todo, FLAGS.batch_size):
        masks = segmenter.segment(images) > FLAGS.threshold
        for i, image, mask in zip(indices, images, masks):
            if FLAGS.overlay:  # first: the mask, written last, marks an image as done for --skip_existing
                picture = visualize.side_by_side([visualize.overlay(image, mask, visualize.RED), support_tile])
                visualize.save_png(outputs[i][1], picture)
            visualize.save_png(outputs[i][0], (mask * 255).astype(np.uint8))
        bar.add(len(indices))


def _calibration_bar():
    """A console progress bar over an int16x8 file's calibration images, made at its first call."""
    from meta_drn_tf import progress

    bars = []

    def report(done: int, total: int) -> None:
        if not bars:
            print(f"Calibrating the int16x8 file on {total} images (the examples and augmentations of them)")
            bars.append(progress.bar(total, unit_name="image"))
        bars[0].update(done)

    return report


def main(argv):
    del argv
    from meta_drn_tf import visualize
    from meta_drn_tf.serving.segmenter import Segmenter

    # Everything the user gave is checked before the model loads.
    support_images, support_masks = read_support(FLAGS.support, FLAGS.support_mask)
    paths = image_paths(FLAGS.images)
    outputs = output_files(output_names(paths, FLAGS.overlay), FLAGS.out, FLAGS.overlay)
    refuse_overwriting_inputs(paths + FLAGS.support + FLAGS.support_mask, outputs)
    todo, existing, skipped = _usable_images(paths, outputs)
    if skipped:
        print(f"Skipping {len(skipped)} unreadable image(s) (--skip_bad_files):\n  " + "\n  ".join(skipped))
    if todo or FLAGS.save_tflite:
        segmenter = Segmenter.load(FLAGS.model, FLAGS.checkpoint, kernels=FLAGS.kernels)
        print(f"Adapting {segmenter.description} to {len(support_images)} example(s); "
              f"segmenting {len(todo)} image(s)")
        segmenter.adapt(support_images, support_masks)
        support_tile = visualize.overlay(support_images[0], support_masks[0], visualize.GREEN)
        _write_masks(segmenter, paths, todo, outputs, support_tile)
        if FLAGS.save_tflite:
            segmenter.export_tflite(FLAGS.save_tflite, FLAGS.tflite_quantize, progress=_calibration_bar())
            print(f"TensorFlow Lite file ({FLAGS.tflite_quantize} quantization): {FLAGS.save_tflite}")
    notes = [f"{len(skipped)} unreadable skipped"] * bool(skipped) + [f"{existing} already there"] * bool(existing)
    print(f"Wrote {len(todo)} mask(s) to {FLAGS.out}" + (f" ({'; '.join(notes)})" if notes else ""))


if __name__ == "__main__":
    cli.run(main, define_flags)
