"""README's picture of the labelling page: a trained run on a held-out synthetic class, in Chromium.

    python tools/app_screenshot.py --model=runs/quickstart [--class_id=80] [--out=docs/app.jpg]

Starts the page (`meta_drn_tf.app`) on the run, uploads one photo of a synthetic class the
run never trained on (ids 76-99 are the quickstart's test classes) with its mask, and eight
more photos of the class as a zip, presses Segment in headless Chromium (Debian's chromium
and chromium-driver, through Selenium: `pip install -e '.[test]'`), and saves the page. Prints
each photo's IoU with its true mask, so the picture's quality is stated, not chosen.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import zipfile

from absl import flags

from meta_drn_tf import cli

flags.DEFINE_string("model", "runs/quickstart", "A training run or SavedModel.")
flags.DEFINE_integer("class_id", 80, "The synthetic class shown (76-99: the quickstart's test classes).")
flags.DEFINE_integer("photo_size", 192, "Side of the synthetic photos, in pixels.")
flags.DEFINE_integer("port", 7871, "The page's port on 127.0.0.1.")
flags.DEFINE_string("out", "docs/app.jpg", "Where the screenshot goes (JPEG, 1000 pixels wide).")
FLAGS = flags.FLAGS
PHOTOS = 8


def _write_photos(folder: str):
    """The example, its mask and a zip of PHOTOS more photos of the class; their true masks."""
    import cv2

    from meta_drn_tf.data.synthetic import synthetic_bank

    bank = synthetic_bank(1, PHOTOS + 1, FLAGS.photo_size, seed=0, first_class=FLAGS.class_id)
    images, masks = bank.images[0], bank.masks[0]
    cv2.imwrite(os.path.join(folder, "example.png"), cv2.cvtColor(images[0], cv2.COLOR_RGB2BGR))
    cv2.imwrite(os.path.join(folder, "example_mask.png"), masks[0] * 255)
    with zipfile.ZipFile(os.path.join(folder, "photos.zip"), "w") as archive:
        for i in range(1, PHOTOS + 1):
            archive.writestr(f"photo{i}.png", cv2.imencode(".png", cv2.cvtColor(images[i], cv2.COLOR_RGB2BGR))[1])
    return images, masks


def _press_segment(browser, url: str, folder: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    upload = {"#example": "example.png", "#example_mask": "example_mask.png", "#photos": "photos.zip"}
    WebDriverWait(browser, 60).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#photos input[type=file]"))
    for where, name in upload.items():
        browser.find_element(By.CSS_SELECTOR, f"{where} input[type=file]").send_keys(os.path.join(folder, name))
    WebDriverWait(browser, 60).until(lambda b: "photos.zip" in {
        cell.get_attribute("aria-label") for cell in b.find_elements(By.CSS_SELECTOR, "#photos td.filename")})
    browser.find_element(By.CSS_SELECTOR, "#segment").click()
    WebDriverWait(browser, 300).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#gallery img")) >= PHOTOS)
    time.sleep(2)  # the gallery's images finish loading


def main(argv):
    del argv
    import cv2
    import numpy as np
    from selenium import webdriver

    from meta_drn_tf.app import build_app
    from meta_drn_tf.serving.segmenter import Segmenter

    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    segmenter = Segmenter.load(FLAGS.model)
    folder = tempfile.mkdtemp(prefix="app_screenshot_")
    images, masks = _write_photos(folder)
    reference = segmenter.copy().adapt(images[0], masks[0].astype(np.float32))
    for i in range(1, PHOTOS + 1):
        predicted, truth = reference.segment(images[i][None])[0] > 0.5, masks[i] > 0
        print(f"photo{i}: IoU {(predicted & truth).sum() / max((predicted | truth).sum(), 1):.2f}")
    page = build_app(segmenter)
    page.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=FLAGS.port)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1900"):
        options.add_argument(argument)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))
    try:
        _press_segment(browser, page.local_url, folder)
        picture = cv2.imdecode(np.frombuffer(browser.get_screenshot_as_png(), np.uint8), cv2.IMREAD_COLOR)
        height, width = picture.shape[:2]
        picture = cv2.resize(picture, (1000, round(height * 1000 / width)), interpolation=cv2.INTER_AREA)
        cv2.imwrite(FLAGS.out, picture, [cv2.IMWRITE_JPEG_QUALITY, 85])
    finally:
        browser.quit()
        page.close()
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    cli.run(main)
