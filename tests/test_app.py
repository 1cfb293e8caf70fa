"""The labelling web app: its logic alone, its page through gradio's API client, and a real browser."""

import io
import os
import shutil
import time
import zipfile

import cv2
import numpy as np
import pytest

from meta_drn_tf.data.synthetic import synthetic_bank
from meta_drn_tf.meta import MetaConfig, MetaLearner
from meta_drn_tf.network.config import NetworkConfig
from meta_drn_tf.network.model import build_meta_drn
from meta_drn_tf.serving import saved_model, tflite
from meta_drn_tf.serving.labelling import LabellingSession, mask_from_painting, mask_from_upload, read_photos
from meta_drn_tf.serving.segmenter import Segmenter

gradio = pytest.importorskip("gradio", reason="the app's extra is not installed: pip install -e '.[app]'")

SIZE = 32


@pytest.fixture(scope="module")
def segmenter():
    import keras

    keras.utils.set_random_seed(0)
    network = NetworkConfig(SIZE, 0.125)
    learner = MetaLearner(build_meta_drn(network), MetaConfig("maml", inner_lr=0.5))
    return Segmenter(saved_model.serving_module(learner, network, inner_steps=5, kernels="stock"), "test model")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An example, its mask (0/255 PNG), three photos (one of another size) and a file that is no image."""
    root = tmp_path_factory.mktemp("photos")
    bank = synthetic_bank(num_classes=3, images_per_class=4, image_size=SIZE, seed=2)
    paths = {}
    for i in range(4):
        image = bank.images[0, i] if i < 3 else cv2.resize(bank.images[0, i], (48, 40))
        paths[f"img{i}"] = str(root / f"img{i}.png")
        cv2.imwrite(paths[f"img{i}"], cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    paths["mask"] = str(root / "mask.png")
    cv2.imwrite(paths["mask"], bank.masks[0, 0] * 255)
    for name in ("grey1", "grey2"):  # photos without a trace of red: red in the gallery is the masks'
        paths[name] = str(root / f"{name}.png")
        cv2.imwrite(paths[name], np.full((SIZE, SIZE, 3), 128, np.uint8))
    paths["notes"] = str(root / "notes.jpg")
    open(paths["notes"], "w").write("not a picture")
    return paths


def _expected_masks(segmenter, files, threshold=0.5):
    """What `segment` would write: the Segmenter adapted to the example, 0/255 at each photo's size."""
    example = cv2.cvtColor(cv2.imread(files["img0"]), cv2.COLOR_BGR2RGB)
    reference = segmenter.copy().adapt(example, cv2.imread(files["mask"], cv2.IMREAD_UNCHANGED) / 255.0)
    photos = {f"img{i}.png": cv2.cvtColor(cv2.imread(files[f"img{i}"]), cv2.COLOR_BGR2RGB) for i in (1, 2, 3)}
    return {name: (reference.segment(image[None])[0] > threshold).astype(np.uint8) * 255
            for name, image in photos.items()}


def _rgb(path: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)


def _write_png(path: str, image: np.ndarray) -> str:
    cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image)
    return path


def _zip_masks(data: bytes) -> dict:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {n: cv2.imdecode(np.frombuffer(archive.read(n), np.uint8), cv2.IMREAD_UNCHANGED)
                for n in archive.namelist()}


def _assert_same_masks(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert got[name].shape == expected[name].shape and np.mean(got[name] != expected[name]) < 1e-3, name


def test_painted_and_uploaded_masks_and_photo_folders(files, tmp_path):
    layer = np.zeros((4, 5, 4), np.uint8)
    layer[1:3, 2:4, 3] = 255
    assert mask_from_painting([None, layer]).sum() == 4 and mask_from_painting([]).size == 0
    assert set(np.unique(mask_from_upload(cv2.imread(files["mask"], cv2.IMREAD_UNCHANGED)))) == {0, 1}
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(files["img1"], "trip/img1.png")
        z.writestr("trip/readme.txt", "skipped: not an image name")
        z.writestr("trip/broken.jpg", b"\x00\x01")
    photos, problems = read_photos([str(archive), files["img2"], files["notes"]])
    assert [name for name, _ in photos] == ["trip/img1.png", "img2.png"]  # a zip's photos keep their folder
    assert len(problems) == 2 and problems[0].startswith("trip/broken.jpg") and problems[1].startswith("notes.jpg")


def test_a_session_adapts_once_and_rethresholds_without_the_network(segmenter, files):
    session = LabellingSession(segmenter)
    example = cv2.cvtColor(cv2.imread(files["img0"]), cv2.COLOR_BGR2RGB)
    mask = cv2.imread(files["mask"], cv2.IMREAD_UNCHANGED) // 255
    with pytest.raises(ValueError, match="the mask is empty"):
        session.adapt([example], [np.zeros_like(mask)])
    fit = session.adapt([example], [mask])
    assert fit.shape == mask.shape
    problems = session.segment([files["img1"], files["img2"], files["img3"], files["notes"]])
    assert len(problems) == 1 and "notes.jpg" in problems[0]
    _assert_same_masks(_zip_masks(session.masks_zip(0.5)), _expected_masks(segmenter, files))
    adapted = session.segmenter._fast_weights
    session.adapt([example], [mask])  # the same example again: no new adaptation
    assert session.segmenter._fast_weights is adapted
    calls = []
    session.segmenter.segment = lambda images: calls.append(images)  # a redraw must not run the network
    low = _zip_masks(session.masks_zip(0.2))
    assert not calls and low["img3.png"].shape == (40, 48)
    assert all((low[n] >= m).all() for n, m in _zip_masks(session.masks_zip(0.5)).items())


@pytest.fixture
def page(segmenter):
    from meta_drn_tf.app import build_app

    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    app = build_app(segmenter)
    app.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=_free_port())
    yield app
    app.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_page_through_its_api_client_gives_segments_masks(page, segmenter, files, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(page.local_url, verbose=False)
    photos = [handle_file(files[n]) for n in ("img1", "img2", "img3", "notes")]
    example = {"background": handle_file(files["img0"]), "layers": [], "composite": None}
    fit, gallery, message, masks = client.predict(example, handle_file(files["mask"]), [], [], photos, 0.5,
                                                  api_name="/segment")
    _assert_same_masks(_zip_masks(open(masks, "rb").read()), _expected_masks(segmenter, files))
    assert len(gallery) == 3 and "notes.jpg" in message and os.path.isfile(fit)
    assert "no image" not in message
    # Redrawing at another threshold (no new adaptation), then the adapted network for phones.
    gallery, message, masks = client.predict(0.3, api_name="/rethreshold")
    _assert_same_masks(_zip_masks(open(masks, "rb").read()), _expected_masks(segmenter, files, 0.3))
    # int16x8 (its calibration reports to the page's progress tracker): the file is the adapted network.
    path = client.predict("int16x8", api_name="/save_tflite")
    photo = _rgb(files["img1"])
    float_file = segmenter.copy().adapt(_rgb(files["img0"]), cv2.imread(files["mask"], cv2.IMREAD_UNCHANGED) / 255.0)
    expected = tflite.run(float_file.export_tflite(str(tmp_path / "f.tflite")), photo[None])
    assert np.abs(tflite.run(path, photo[None]) - expected).mean() < 0.025
    # Two examples (2-shot): the second photo with its mask, as a person adds them; masks as `segment`'s.
    more = synthetic_bank(num_classes=3, images_per_class=4, image_size=SIZE, seed=2)
    second = _write_png(files["img0"].replace("img0", "second"), more.images[0, 3])
    second_mask = _write_png(files["img0"].replace("img0", "second_mask"), more.masks[0, 3] * 255)
    _, gallery, message, masks = client.predict(example, handle_file(files["mask"]), [handle_file(second)],
                                                [handle_file(second_mask)], photos[:2], 0.5, api_name="/segment")
    reference = segmenter.copy().adapt(np.stack([_rgb(files["img0"]), more.images[0, 3]]),
                                       np.stack([more.masks[0, 0], more.masks[0, 3]]).astype(np.float32))
    got = _zip_masks(open(masks, "rb").read())
    for name in ("img1.png", "img2.png"):
        expected = (reference.segment(_rgb(files[name[:-4]])[None])[0] > 0.5).astype(np.uint8) * 255
        assert np.mean(got[name] != expected) < 1e-3, name
    with pytest.raises(Exception, match="1 more example photo.* but 0 mask"):
        client.predict(example, handle_file(files["mask"]), [handle_file(second)], [], photos, 0.5,
                       api_name="/segment")
    example_image = cv2.cvtColor(cv2.imread(files["img1"]), cv2.COLOR_BGR2RGB)
    assert tflite.run(path, example_image[None]).shape == (1, SIZE, SIZE)


def _browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (binary and driver_path):
        pytest.skip("no Chromium here: apt-get install chromium chromium-driver (.ci/run does)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,2000"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))


def _segment_in_the_browser(browser, url: str, files: dict, photos: list[str], threshold: str | None = None):
    """What a person does: opens the page, uploads the example, its mask and the photos, presses Segment."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    WebDriverWait(browser, 60).until(ready.presence_of_element_located((By.CSS_SELECTOR, "#example input[type=file]")))
    browser.find_element(By.CSS_SELECTOR, "#example input[type=file]").send_keys(files["img0"])
    browser.find_element(By.CSS_SELECTOR, "#example_mask input[type=file]").send_keys(files["mask"])
    browser.find_element(By.CSS_SELECTOR, "#photos input[type=file]").send_keys("\n".join(photos))
    if threshold is not None:
        level = browser.find_element(By.CSS_SELECTOR, "#threshold input[type=number]")
        level.clear()
        level.send_keys(threshold + "\t")
    # The uploads have reached the server once the photo list shows every file's name.
    WebDriverWait(browser, 60).until(lambda b: {os.path.basename(p) for p in photos} <= {
        cell.get_attribute("aria-label") for cell in b.find_elements(By.CSS_SELECTOR, "#photos td.filename")})
    time.sleep(1)
    browser.find_element(By.CSS_SELECTOR, "#segment").click()


def _gallery_images(browser) -> int:
    from selenium.webdriver.common.by import By

    return len(browser.find_elements(By.CSS_SELECTOR, "#gallery img"))


def test_a_person_uploads_an_example_its_mask_and_photos_and_sees_the_masks(page, files, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _browser()
    try:  # a low threshold: most of each photo counts as the object
        _segment_in_the_browser(browser, page.local_url, files, [files["grey1"], files["grey2"]], "0.05")
        WebDriverWait(browser, 60).until(lambda b: _gallery_images(b) >= 2)
        time.sleep(1)
        gallery = browser.find_element(By.CSS_SELECTOR, "#gallery")
        browser.execute_script("arguments[0].scrollIntoView()", gallery)
        picture = tmp_path / "app.png"
        browser.save_screenshot(str(picture))  # the test's artifact, kept in pytest's tmp_path
        crop = cv2.imdecode(np.frombuffer(gallery.screenshot_as_png, np.uint8), cv2.IMREAD_COLOR)
    finally:
        browser.quit()
    blue, green, red = (crop[..., i].astype(int) for i in range(3))
    reddish = (red > 120) & (red > green + 60) & (red > blue + 60)  # grey photos have none of these
    assert reddish.mean() > 0.2, f"the red mask overlay covers {reddish.mean():.1%} of the gallery"


def test_a_person_segmenting_fifty_photos_sees_the_progress(page, files, tmp_path, monkeypatch):
    """The page says how far a long run has got ("Segmenting photos 12/50"), while it runs."""
    import re

    bank = synthetic_bank(num_classes=3, images_per_class=10, image_size=SIZE, seed=5)
    photos = [_write_png(str(tmp_path / f"photo{i:02d}.png"), bank.images[i % 3, i // 5]) for i in range(50)]
    real_segment = Segmenter.segment

    def slow_segment(self, images):  # 0.1 s a photo: about 5 s for the fifty, long enough to watch
        time.sleep(0.1)
        return real_segment(self, images)

    monkeypatch.setattr(Segmenter, "segment", slow_segment)
    browser = _browser()
    seen = set()
    try:
        _segment_in_the_browser(browser, page.local_url, files, photos)
        deadline = time.time() + 120
        while _gallery_images(browser) < 50 and time.time() < deadline:
            seen.update(int(n) for n in re.findall(r"Segmenting photos\D*(\d+)\s*/\s*50", browser.page_source))
            time.sleep(0.05)
        assert _gallery_images(browser) == 50
    finally:
        browser.quit()
    # Several readings that count up to the fifty: the bar moved while the photos were being segmented.
    assert len(seen) >= 3 and max(seen) <= 50, sorted(seen)


@pytest.mark.slow
def test_one_visitors_long_run_does_not_block_another(page, files, monkeypatch):
    from gradio_client import Client, handle_file

    first, second = Client(page.local_url, verbose=False), Client(page.local_url, verbose=False)
    example = {"background": handle_file(files["img0"]), "layers": [], "composite": None}

    def segment(client, photos):
        return client.submit(example, handle_file(files["mask"]), [], [], [handle_file(p) for p in photos], 0.5,
                             api_name="/segment")

    segment(first, [files["img1"]]).result(timeout=120)  # the model's first use traces its graphs, once
    real_segment = Segmenter.segment

    def slow_segment(self, images):  # a long run: 0.3 s per photo, 6 s for twenty
        time.sleep(0.3)
        return real_segment(self, images)

    monkeypatch.setattr(Segmenter, "segment", slow_segment)
    long_run = segment(first, [files["img1"]] * 20)
    time.sleep(1.0)  # the long run is under way
    started = time.time()
    gallery = segment(second, [files["img2"]]).result(timeout=120)[1]  # another visitor, the same button
    assert len(gallery) == 1 and time.time() - started < 3.0, f"answered after {time.time() - started:.1f} s"
    assert not long_run.done(), "the long run ended before the other visitor was answered: not a test"
    assert len(long_run.result(timeout=120)[1]) == 20


def test_photos_of_one_name_get_masks_of_their_own_in_the_zip(segmenter, files, tmp_path):
    """Two folders of a zip holding 1.png each, and the same file uploaded twice: one entry each."""
    image = cv2.imread(files["img1"])
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for folder in ("cats", "dogs"):
            z.writestr(f"{folder}/1.png", cv2.imencode(".png", image)[1].tobytes())
    session = LabellingSession(segmenter)
    example = cv2.cvtColor(cv2.imread(files["img0"]), cv2.COLOR_BGR2RGB)
    session.adapt([example], [cv2.imread(files["mask"], cv2.IMREAD_UNCHANGED) // 255])
    assert session.segment([str(archive), files["img2"], files["img2"]]) == []
    names = zipfile.ZipFile(io.BytesIO(session.masks_zip(0.5))).namelist()
    assert names == ["cats/1.png", "dogs/1.png", "img2_png.png", "img2_png-2.png"]


def test_uploads_too_large_to_decode_are_named_not_decoded(tmp_path, monkeypatch):
    from meta_drn_tf.serving import labelling

    # 724 bytes of zip that hold a 12000x12000 PNG (4.4 GB decoded as RGB float).
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("huge.png", cv2.imencode(".png", np.zeros((12000, 12000), np.uint8))[1].tobytes())
    photos, problems = read_photos([str(bomb)])
    assert photos == [] and problems == ["huge.png: about 12000x12000 pixels, more than the 100 megapixels this "
                                         "program decodes; downscale it first"]
    monkeypatch.setattr(labelling, "MAX_UNZIPPED_BYTES", 1000)
    photos, problems = read_photos([str(bomb)])
    assert photos == [] and problems[0].startswith("bomb.zip: unpacks to more than the page's 0 MiB")


def test_a_second_page_on_a_port_in_use_is_refused():
    import socket

    from meta_drn_tf.app import port_is_free

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert not port_is_free(port)
    assert port_is_free(port)


def test_zip_names_that_climb_out_give_masks_inside_the_folder(segmenter, files, tmp_path):
    image = cv2.imencode(".png", cv2.imread(files["img1"]))[1].tobytes()
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in ("x/../../../../tmp/escaped/1.jpg", "/abs/1.jpg", "..\\win\\2.png", "C:/drive/3.png"):
            z.writestr(zipfile.ZipInfo(name), image)  # ZipInfo keeps the name as written
    session = LabellingSession(segmenter)
    example = cv2.cvtColor(cv2.imread(files["img0"]), cv2.COLOR_BGR2RGB)
    session.adapt([example], [cv2.imread(files["mask"], cv2.IMREAD_UNCHANGED) // 255])
    assert session.segment([str(archive)]) == []
    names = zipfile.ZipFile(io.BytesIO(session.masks_zip(0.5))).namelist()
    assert len(names) == 4
    for name in names:
        assert not name.startswith(("/", "\\")) and ".." not in name.replace("\\", "/").split("/") and ":" not in name
        unpacked = os.path.normpath(os.path.join(str(tmp_path / "unpack"), name))
        assert unpacked.startswith(str(tmp_path / "unpack") + os.sep)


def test_a_zip_is_read_by_what_it_really_unpacks_to_not_its_headers(tmp_path):
    """A member whose header declares 1,000 bytes but which inflates to 8 MiB: read a chunk at a time."""
    archive = tmp_path / "liar.zip"
    payload = b"\0" * (8 * 2**20)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.png", payload)
    data = bytearray(archive.read_bytes())
    for header in (b"PK\x03\x04", b"PK\x01\x02"):  # the local header and the central directory's entry
        at = data.index(header)
        size_at = at + (22 if header == b"PK\x03\x04" else 24)
        data[size_at : size_at + 4] = (1000).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    import tracemalloc

    tracemalloc.start()
    try:
        photos, problems = read_photos([str(archive)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert photos == [] and problems == ["liar.zip: not a readable zip file (damaged, encrypted or of an unknown kind)"]
    assert peak < 4 * 2**20  # inflated a chunk at a time, never the whole 8 MiB


def test_the_photos_of_one_segmentation_are_bounded_in_pixels_before_decoding(tmp_path, monkeypatch, segmenter):
    from meta_drn_tf.serving import labelling

    monkeypatch.setattr(labelling, "MAX_PAGE_PIXELS", 250_000)
    with pytest.raises(ValueError, match="example 1: 600x500 pixels, more than the 0 megapixels the page adapts to"):
        LabellingSession(segmenter).adapt([np.zeros((500, 600, 3), np.uint8)], [np.ones((500, 600), np.uint8)])

    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(4):
            z.writestr(f"{i}.png", cv2.imencode(".png", np.zeros((300, 400), np.uint8))[1].tobytes())
    decoded = []
    monkeypatch.setattr(labelling, "_decode", lambda name, data: decoded.append(name) or np.zeros((300, 400, 3)))
    photos, problems = read_photos([str(archive)], max_pixels=250_000)
    assert [name for name, _ in photos] == ["0.png", "1.png"] and decoded == ["0.png", "1.png"]
    assert len(problems) == 2 and problems[0].startswith("2.png: left out: the photos of one segmentation")


def test_a_zip_member_larger_than_any_photo_is_named_and_the_others_read(tmp_path, monkeypatch):
    """A valid PNG header followed by megabytes of zeros: refused as it unpacks, the next photo read."""
    from meta_drn_tf.serving import labelling

    monkeypatch.setattr(labelling, "MAX_MEMBER_BYTES", 2**20)
    small = cv2.imencode(".png", np.full((16, 16, 3), 70, np.uint8))[1].tobytes()
    archive = tmp_path / "padded.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.png", small + b"\0" * (8 * 2**20))
        z.writestr("b.png", small)
    photos, problems = read_photos([str(archive)])
    assert [name for name, _ in photos] == ["b.png"]
    assert problems == ["a.png: more than 1 MiB, larger than any photo the page reads"]
