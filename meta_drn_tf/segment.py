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
already there. Nothing already in --out is replaced unless --overwrite is given; outputs
that would overwrite an input (a photo, an example, the masks beside photos) are always refused.
"""

from __future__ import annotations

from absl import flags

from meta_drn_tf import cli
from meta_drn_tf.cli import shared_flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The flags of `python -m meta_drn_tf.segment`."""
    from meta_drn_tf.serving.tflite import QUANTIZATIONS

    shared_flags.define_model()
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
                      "already in --out: continues an interrupted run (files of an image left half-done are replaced).")
    flags.DEFINE_bool("overwrite", False, "Replace files already in --out (by default they are kept and the command "
                      "stops, naming one). Input photos and the masks beside them are never replaced.")
    shared_flags.define_checkpoint()
    shared_flags.define_kernels(default="auto")
    shared_flags.define_tf32()
    flags.adopt_module_key_flags(shared_flags)  # listed by --help as this command's own
    flags.DEFINE_string("save_tflite", None, "Also write the adapted network as a TensorFlow Lite file: one uint8 "
                        "image at the training size in, probabilities out (for phones and edge devices).")
    flags.DEFINE_enum("tflite_quantize", "none", QUANTIZATIONS, "The TensorFlow Lite file's numbers: none "
                      "(float32), float16 (weights: half the size), int8 (weights: a quarter, for CPUs) or "
                      "int16x8 (integer throughout, calibrated on the example: for integer-only NPUs).")
    cli.check_paths(support="file", support_mask="file", out="new_folder", save_tflite="new_file")
    flags.register_validator("threshold", lambda t: 0 < t < 1, message="must lie strictly between 0 and 1")
    flags.register_validator("batch_size", lambda b: b >= 1, message="must be at least 1")


def main(argv):
    del argv
    from meta_drn_tf.results import visualize
    from meta_drn_tf.serving import segment_files as files
    from meta_drn_tf.serving.segmenter import Segmenter

    # Everything the user gave is checked before the model loads.
    support_images, support_masks = files.read_support(FLAGS.support, FLAGS.support_mask)
    paths, masks_beside = files.image_and_mask_paths(FLAGS.images)
    outputs = files.output_files(files.output_names(paths, FLAGS.overlay), FLAGS.out, FLAGS.overlay)
    files.refuse_overwriting(paths + masks_beside + FLAGS.support + FLAGS.support_mask, outputs, FLAGS.out,
                             FLAGS.overwrite, FLAGS.skip_existing)
    todo, existing, skipped = files.usable_images(paths, outputs, FLAGS.skip_existing, FLAGS.skip_bad_files)
    if skipped:
        print(f"Skipping {len(skipped)} unreadable image(s) (--skip_bad_files):\n  " + "\n  ".join(skipped))
    if todo or FLAGS.save_tflite:
        segmenter = Segmenter.load(FLAGS.model, FLAGS.checkpoint, kernels=FLAGS.kernels, trust=FLAGS.trust_model)
        print(f"Adapting {segmenter.description} to {len(support_images)} example(s); "
              f"segmenting {len(todo)} image(s)")
        segmenter.adapt(support_images, support_masks)
        support_tile = visualize.overlay(support_images[0], support_masks[0], visualize.GREEN)
        files.write_masks(segmenter, paths, todo, outputs, FLAGS.threshold, FLAGS.batch_size, support_tile)
        if FLAGS.save_tflite:
            segmenter.export_tflite(FLAGS.save_tflite, FLAGS.tflite_quantize, progress=files.calibration_bar())
            print(f"TensorFlow Lite file ({FLAGS.tflite_quantize} quantization): {FLAGS.save_tflite}")
    notes = [f"{len(skipped)} unreadable skipped"] * bool(skipped) + [f"{existing} already there"] * bool(existing)
    print(f"Wrote {len(todo)} mask(s) to {FLAGS.out}" + (f" ({'; '.join(notes)})" if notes else ""))


if __name__ == "__main__":
    cli.run(main, define_flags)
