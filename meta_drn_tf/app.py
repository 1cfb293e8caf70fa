"""A local web page to label one example and segment a set of photos: `pip install -e '.[app]'`.

    python -m meta_drn_tf.app --model=runs/quickstart [--port=7860]

Open the address it prints (http://127.0.0.1:7860). Paint the object on an example
photo (or upload its mask), drop the photos (or a zip of them), press Segment: every
photo comes back with its mask overlaid, beside the example's own fit. The threshold
slider redraws the masks without running the network again; "Download all masks"
gives a zip of PNGs in the encoding of `segment` (0 = background, 255 = object, at
each photo's size) and "Save for phones" a TensorFlow Lite file of the adapted
network. More examples (k-shot) go under "More examples" as photos
with their masks. The page listens on this machine only, sends nothing anywhere, and serves
several people at once, each with their own adaptation.
"""

from __future__ import annotations

import os
import tempfile

from absl import flags

from meta_drn_tf import cli
from meta_drn_tf.cli import shared_flags
from meta_drn_tf.errors import ConfigError

FLAGS = flags.FLAGS
THRESHOLD = 0.5


def define_flags() -> None:
    """The flags of `python -m meta_drn_tf.app`."""
    shared_flags.define_model()
    flags.DEFINE_integer("port", 7860, "The page's port on 127.0.0.1.")
    shared_flags.define_checkpoint()
    shared_flags.define_kernels(default="auto")
    shared_flags.define_tf32()
    flags.adopt_module_key_flags(shared_flags)  # listed by --help as this command's own
    flags.register_validator("port", lambda p: 0 < p < 65536, message="must be a port number (1-65535)")


def _example(editor: dict | None, uploaded_mask):
    """The example photo and its mask from the page: painted layers, else the uploaded mask."""
    import gradio as gr
    import numpy as np

    from meta_drn_tf.serving.labelling import mask_from_painting, mask_from_upload

    background = (editor or {}).get("background")
    if background is None:
        raise gr.Error("Add an example photo first (step 1).")
    image = np.asarray(background)[..., :3].astype(np.uint8)
    mask = mask_from_painting((editor or {}).get("layers") or [])
    if not mask.any() and uploaded_mask is not None:
        mask = mask_from_upload(uploaded_mask)
    return image, mask


def _paths(files) -> list[str]:
    """Local paths of gradio's uploaded files (paths, or objects with a `name`)."""
    return [getattr(f, "name", f) for f in files or []]


class _Handlers:
    """What the page's buttons and slider do, for a loaded `Segmenter`; files go under `folder`."""

    def __init__(self, segmenter, folder: str):
        self.segmenter, self.folder = segmenter, folder

    def run(self, editor, uploaded_mask, more_photos, more_masks, files, threshold, session, progress):
        import gradio as gr

        from meta_drn_tf.serving.labelling import LabellingSession, read_examples

        image, mask = _example(editor, uploaded_mask)
        if not files:
            raise gr.Error("Add the photos to segment first (step 2).")
        session = session or LabellingSession(self.segmenter)
        try:
            images, masks = read_examples(_paths(more_photos), _paths(more_masks))
            # `progress` is gradio's tracker (falsy until it tracks an iterable: never test it for truth).
            progress(0.0, desc="Adapting to the example")  # the first adaptation traces graphs: seconds
            fit = session.adapt([image, *images], [mask, *masks])
            problems = session.segment(_paths(files), progress=lambda i, n: progress((i, n), desc="Segmenting photos"))
        except ValueError as e:
            raise gr.Error(str(e)) from None
        return (_fit_picture(image, mask, fit, threshold), *self.results(session, threshold, problems), session)

    def results(self, session, threshold: float, problems=()):
        """The gallery, the message and the masks' zip at `threshold`."""
        message = f"{len(session.photos)} photo(s) segmented at threshold {threshold:.2f}."
        if problems:
            message += "\n\nLeft out:\n" + "\n".join(f"- {p}" for p in problems)
        from meta_drn_tf.paths import write_atomically

        zip_path = os.path.join(tempfile.mkdtemp(dir=self.folder), "masks.zip")
        write_atomically(zip_path, session.masks_zip(threshold))
        return session.overlays(threshold), message, zip_path

    def rethreshold(self, threshold, session):
        if session is None or not session.photos:
            return [], "Nothing segmented yet.", None
        return self.results(session, threshold)

    def save_tflite(self, quantize, session, progress):
        import gradio as gr

        if session is None or session.example is None:
            raise gr.Error("Segment with an example first: the file holds the adapted network.")
        path = os.path.join(tempfile.mkdtemp(dir=self.folder), f"segmenter_{quantize}.tflite")
        # int16x8 runs the network on its calibration images: minutes at 224 px on a CPU.
        return session.segmenter.export_tflite(
            path, quantize, progress=lambda i, n: progress((i, n), desc="Calibrating the integer file"))


def _fit_picture(image, mask, fit, threshold):
    """The example with the mask given (green) beside the adapted network's (red)."""
    from meta_drn_tf.results import visualize

    return visualize.side_by_side([visualize.overlay(image, mask, visualize.GREEN),
                                   visualize.overlay(image, fit > threshold, visualize.RED)])


def build_app(segmenter):
    """The page (a `gradio.Blocks`) around a loaded `Segmenter`; each visitor adapts their own copy."""
    import gradio as gr

    from meta_drn_tf.serving.tflite import QUANTIZATIONS

    handlers = _Handlers(segmenter, tempfile.mkdtemp(prefix="meta_drn_app_"))

    def run(editor, uploaded_mask, more_photos, more_masks, files, threshold, session, progress=gr.Progress()):
        return handlers.run(editor, uploaded_mask, more_photos, more_masks, files, threshold, session, progress)

    def save_tflite(quantize, session, progress=gr.Progress()):
        return handlers.save_tflite(quantize, session, progress)

    with gr.Blocks(title="meta_drn_tf: segment from one example", analytics_enabled=False) as page:
        gr.Markdown(f"# Segment photos from one example\nModel: {segmenter.description}")
        session = gr.State(None)
        with gr.Row():
            editor = gr.ImageEditor(label="1. An example photo: paint the object on it", type="numpy",
                                    image_mode="RGBA", sources=["upload"], elem_id="example",
                                    brush=gr.Brush(colors=["#ff3b30"], color_mode="fixed"))
            uploaded_mask = gr.Image(label="…or upload its mask instead of painting", type="numpy",
                                     image_mode="L", sources=["upload"], elem_id="example_mask")
        with gr.Accordion("More examples (optional): photos and their masks, in the same order", open=False):
            with gr.Row():
                more_photos = gr.File(label="Photos", file_count="multiple", file_types=["image"])
                more_masks = gr.File(label="Their masks", file_count="multiple", file_types=["image"])
        files = gr.File(label="2. The photos to segment (images or a zip)", file_count="multiple",
                        file_types=["image", ".zip"], elem_id="photos")
        button = gr.Button("3. Segment", variant="primary", elem_id="segment")
        threshold = gr.Slider(0.05, 0.95, value=THRESHOLD, step=0.05, label="Threshold: a pixel is the object "
                              "above this probability", elem_id="threshold")
        message = gr.Markdown(elem_id="message")
        fit = gr.Image(label="The example: your mask (green) and the adapted network's (red)", elem_id="fit")
        gallery = gr.Gallery(label="Masks (red)", columns=4, elem_id="gallery")
        masks = gr.File(label="Download all masks (zip of PNGs)", elem_id="masks")
        with gr.Row():
            quantize = gr.Radio(list(QUANTIZATIONS), value="int8", label="Save for phones: quantization",
                                info="int8: a quarter of the size, for phones' CPUs; int16x8: integer only, "
                                     "for neural accelerators (calibrated on your examples).")
            save = gr.Button("Save the adapted segmenter (TensorFlow Lite)")
            tflite_file = gr.File(label="TensorFlow Lite file")
        button.click(run, [editor, uploaded_mask, more_photos, more_masks, files, threshold, session],
                     [fit, gallery, message, masks, session], api_name="segment")
        threshold.release(handlers.rethreshold, [threshold, session], [gallery, message, masks],
                          api_name="rethreshold")
        save.click(save_tflite, [quantize, session], tflite_file, api_name="save_tflite")
    return page.queue(default_concurrency_limit=4)


def main(argv):
    del argv
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no telemetry: nothing leaves this machine
    from meta_drn_tf.serving.segmenter import Segmenter

    segmenter = Segmenter.load(FLAGS.model, FLAGS.checkpoint, kernels=FLAGS.kernels,
                               trust=FLAGS.trust_model)
    from meta_drn_tf.serving.labelling import MAX_UPLOAD

    if not port_is_free(FLAGS.port):
        raise ConfigError(f"--port {FLAGS.port}: another program listens on 127.0.0.1:{FLAGS.port} (a page "
                          "already running?); stop it, or give another --port")
    build_app(segmenter).launch(server_name="127.0.0.1", server_port=FLAGS.port, share=False,
                                max_file_size=MAX_UPLOAD)


def port_is_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:`port` now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


if __name__ == "__main__":
    cli.run(main, define_flags)
