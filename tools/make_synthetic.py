"""Write the embedded synthetic dataset to disk in the FSS-1000 layout.

    python tools/make_synthetic.py --out /tmp/synthetic --classes 100 --images 10 --size 224

The result reads like FSS-1000: `--data_dir=/tmp/synthetic` (classes are split
by seed, 70/6/24, like any folder that is not FSS-1000).
"""

from __future__ import annotations

from absl import flags

from meta_drn_tf import cli
from meta_drn_tf.data.synthetic import synthetic_bank, write_fss_layout

flags.DEFINE_string("out", None, "Output directory.", required=True)
flags.DEFINE_integer("classes", 100, "Number of object families.")
flags.DEFINE_integer("images", 10, "Images per class.")
flags.DEFINE_integer("size", 224, "Image height and width.")
flags.DEFINE_integer("seed", 0, "Dataset seed.")
FLAGS = flags.FLAGS
cli.check_paths(out="new_folder")
flags.register_validator("classes", lambda n: n >= 1, message="must be at least 1")
flags.register_validator("images", lambda n: n >= 2, message="must be at least 2 (a support image and a query)")
flags.register_validator("size", lambda n: n >= 8, message="must be at least 8 pixels")


def main(argv):
    del argv
    bank = synthetic_bank(FLAGS.classes, FLAGS.images, FLAGS.size, FLAGS.seed)
    write_fss_layout(bank, FLAGS.out)
    print(f"wrote {bank.num_classes} classes x {FLAGS.images} images ({FLAGS.size}x{FLAGS.size}) to {FLAGS.out}")


if __name__ == "__main__":
    cli.run(main)
