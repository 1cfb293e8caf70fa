"""COCO 2014's instance annotations as the label-map PNGs COCO-20i is read from.

    python tools/coco_label_maps.py --annotations=COCO2014/annotations/instances_val2014.json \
        --out=COCO2014/annotations/val2014

One grey PNG per photo, named as the photo: each pixel holds k + 1 for the k-th of COCO's 80
categories (in the order of their ids), 0 elsewhere. Objects are drawn largest first, so a small
object on a large one stays visible. Polygons and crowd regions (run-length counts) are both drawn;
existing PNGs are kept (the tool resumes where it stopped). Needs no COCO API.
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import flags

from meta_drn_tf import cli

flags.DEFINE_string("annotations", None, "COCO's instances_<split>2014.json.", required=True)
flags.DEFINE_string("out", None, "The folder of label maps to write (annotations/<split>2014).", required=True)
FLAGS = flags.FLAGS


def crowd_region(counts: list[int], height: int, width: int) -> np.ndarray:
    """A run-length region (COCO's uncompressed RLE: alternating runs of 0 and 1, column by column)."""
    flat = np.zeros(height * width, bool)
    position = 0
    for i, run in enumerate(counts):
        if i % 2:
            flat[position:position + run] = True
        position += run
    return flat.reshape(width, height).T


def label_map(image: dict, annotations: list[dict], index: dict[int, int]) -> np.ndarray:
    """The label map of one photo from its annotations; `index` maps category ids to 1..80."""
    import cv2

    labels = np.zeros((image["height"], image["width"]), np.uint8)
    for a in sorted(annotations, key=lambda a: -a["area"]):
        value = index[a["category_id"]]
        if a.get("iscrowd"):
            counts = a["segmentation"]["counts"]
            if isinstance(counts, list):
                labels[crowd_region(counts, image["height"], image["width"])] = value
            continue  # compressed RLE appears only in result files, never in COCO's own annotations
        polygons = [np.round(np.asarray(p, np.float64).reshape(-1, 2)).astype(np.int32) for p in a["segmentation"]]
        cv2.fillPoly(labels, polygons, int(value))
    return labels


def main(argv):
    del argv
    import cv2

    from meta_drn_tf.progress import bar

    with open(FLAGS.annotations) as f:
        coco = json.load(f)
    index = {c["id"]: k + 1 for k, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))}
    by_image: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    os.makedirs(FLAGS.out, exist_ok=True)
    progress = bar(len(coco["images"]), unit_name="image")
    for image in coco["images"]:
        path = os.path.join(FLAGS.out, os.path.splitext(image["file_name"])[0] + ".png")
        if not os.path.exists(path):  # whole or absent: written aside, then renamed
            encoded = cv2.imencode(".png", label_map(image, by_image.get(image["id"], []), index))[1]
            with open(path + ".partial", "wb") as f:
                f.write(encoded.tobytes())
            os.replace(path + ".partial", path)
        progress.add(1)
    print(f"{len(coco['images'])} label maps in {FLAGS.out}")


if __name__ == "__main__":
    cli.run(main)
