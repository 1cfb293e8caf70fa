"""The documentation: README's promises (its first commands, its length, its Python that runs as
written) and the site under docs/, built strict so that a broken link or API reference fails."""

import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tensorflow as tf
import warm
import yaml

from meta_drn_tf.runs.config import RunConfig
from meta_drn_tf.runs.directory import RunDirectory
from meta_drn_tf.runs.learners import build_learner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()


def _mkdocs(tmp_path, api_extra: str = ""):
    """`mkdocs build --strict` of a copy of the site (its API page with `api_extra` appended)."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in os.listdir(os.path.join(ROOT, "docs")):
        source = os.path.join(ROOT, "docs", name)
        os.symlink(source, docs / name) if name != "api.md" else (docs / name).write_text(
            open(source).read() + api_extra)
    with open(os.path.join(ROOT, "mkdocs.yml")) as f:
        config = yaml.safe_load(f)
    config.update(docs_dir=str(docs), site_dir=str(tmp_path / "site"))
    config["plugins"][1]["mkdocstrings"]["handlers"]["python"]["paths"] = [ROOT]
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(tmp_path / "mkdocs.yml")],
                          capture_output=True, text=True, timeout=300)


def test_the_site_builds_strict_with_the_api_reference(tmp_path):
    out = _mkdocs(tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("Segmenter", "build_meta_drn", "MetaLearner", "RunConfig", "ImageBank"):
        assert re.search(rf'id="meta_drn_tf\.[\w.]*{name}"', api), name
    assert "Adapts to labelled examples" in api  # a docstring, rendered


def test_a_broken_api_reference_fails_the_build(tmp_path):
    out = _mkdocs(tmp_path, "\n::: meta_drn_tf.network.no_such_module\n")
    assert out.returncode != 0
    assert "no_such_module" in out.stderr


def test_readme_opens_with_the_main_job_and_the_test_command_and_stays_short():
    commands = [line for line in README.splitlines() if line.startswith("python3 -m venv")]
    assert commands[0].endswith("python -m meta_drn_tf.train --flagfile=flags/quickstart.flags")
    assert "pip install -e '.[test]'" in commands[1] and "pytest" in commands[1]
    # .ci/run runs the first line that installs the test extra: it must be the test command.
    ci_line = next(line for line in README.splitlines() if "pip install -e '.[test]'" in line)
    assert ci_line == commands[1]
    assert len(README.splitlines()) <= 250
    assert not re.search(r"#\d{2}\b|\b20\d\d-\d\d-\d\d\b", README), "issue numbers and dates belong in docs/"


def test_readme_links_point_at_files_that_exist():
    for target in re.findall(r"\]\(((?!https?:)[^)#]+)", README):
        assert os.path.exists(os.path.join(ROOT, target)), target


@pytest.mark.slow
def test_readme_python_runs_as_written(tmp_path):
    """Every ```python block of README, in order, in one script, in a folder holding what they name."""
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(blocks) >= 2
    run = tmp_path / "runs" / "quickstart"
    config = RunConfig.from_flags(model_dir=str(run), image_size=16, width=0.0625)
    RunDirectory(str(run)).claim(config)
    tf.train.CheckpointManager(tf.train.Checkpoint(learner=build_learner(config)), str(run / "best"), 1).save()
    image = np.full((40, 30, 3), 90, np.uint8)
    image[10:30, 5:25] = (30, 200, 60)
    (tmp_path / "photos").mkdir()
    cv2.imwrite(str(tmp_path / "cat1.jpg"), image)
    cv2.imwrite(str(tmp_path / "cat1.png"), (image[..., 1] > 150).astype(np.uint8) * 255)
    cv2.imwrite(str(tmp_path / "photos" / "cat2.jpg"), image[::-1])
    (tmp_path / "readme.py").write_text("\n".join(blocks))
    out = warm.run([sys.executable, "readme.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    mask = cv2.imread(str(tmp_path / "cat2_mask.png"), cv2.IMREAD_GRAYSCALE)
    assert mask.shape == (40, 30) and set(np.unique(mask)) <= {0, 255}
    assert re.search(r"test mIoU@0.5: \d\.\d{3}", out.stdout), out.stdout[-2000:]
    assert (tmp_path / "runs" / "tiny" / "best_model.keras").exists()


def test_tools_readme_lists_every_script_with_its_command():
    """tools/README.md is the index of tools/: every script has a row whose command runs it."""
    index = open(os.path.join(ROOT, "tools", "README.md")).read()
    scripts = sorted(f for f in os.listdir(os.path.join(ROOT, "tools")) if f.endswith(".py"))
    rows = {f: re.search(rf"^\| `{re.escape(f)}` \|(.*)\|$", index, re.MULTILINE) for f in scripts}
    assert [f for f, row in rows.items() if not row] == []
    helpers = {"timing.py", "profiling.py"}  # imported by the scripts, not run
    assert [f for f, row in rows.items() if f not in helpers and f"tools/{f}" not in row[1]] == []
    for helper in helpers:  # a helper's users import it; no script imports another script
        assert any(f"from {helper[:-3]} import" in open(os.path.join(ROOT, "tools", f)).read() for f in scripts)
    for f in scripts:
        text = open(os.path.join(ROOT, "tools", f)).read()
        imported = set(re.findall(r"^from (\w+) import", text, re.MULTILINE)) & {s[:-3] for s in scripts}
        assert imported <= {h[:-3] for h in helpers}, (f, imported)


def _headings(path: str) -> list[str]:
    with open(path) as f:
        return [line.lstrip("#").strip() for line in f if re.match(r"#{1,6} ", line)]


def _slug(heading: str) -> str:
    """The anchor mkdocs (Python-Markdown's toc) and GitHub give a heading."""
    return re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", heading.lower()).strip())


def _texts():
    """(path, text) of the package, the tools, the tests and the docs, with line breaks, comment
    marks and string-literal joins folded into single spaces (a section name wraps like any text)."""
    names = [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "tools", "README.md")]
    for folder in ("meta_drn_tf", "tools", "tests", "docs"):
        for root, _, files in os.walk(os.path.join(ROOT, folder)):
            names += [os.path.join(root, f) for f in files if f.endswith((".py", ".md"))]
    for path in names:
        if path == os.path.abspath(__file__):  # its own examples
            continue
        text = open(path).read()
        yield path, re.sub(r"[\"']?\s*\n\s*(#\s*)?[f]?[\"']?", " ", text) if path.endswith(".py") else \
            re.sub(r"\s*\n\s*", " ", text)


def test_every_doc_and_section_that_code_and_docs_name_exists():
    """`docs/X.md`, `docs/X.md, "Section"`, `[...](X.md#anchor)` and "README's Section)" point at a
    file and a heading that exist: a renamed section fails here, not in a user's terminal."""
    wrong = []
    for path, text in _texts():
        for name in re.findall(r"\bdocs/(\w+)\.md", text):
            if not os.path.isfile(os.path.join(ROOT, "docs", name + ".md")):
                wrong.append(f"{path}: docs/{name}.md")
        for name, section in re.findall(r"\bdocs/(\w+)\.md`?,? \(?[\"“]([^\"”]+)[\"”]", text):
            target = os.path.join(ROOT, "docs", name + ".md")
            if os.path.isfile(target) and not any(h.startswith(section) for h in _headings(target)):
                wrong.append(f"{path}: docs/{name}.md, {section!r}")
        for target, anchor in re.findall(r"\]\(((?!https?:)[\w./-]*\.md)#([\w-]+)\)", text):
            target = os.path.normpath(os.path.join(os.path.dirname(path), target))
            if not os.path.isfile(target) or anchor not in map(_slug, _headings(target)):
                wrong.append(f"{path}: {target}#{anchor}")
        for section in re.findall(r"README(?:'s|,) ([A-Z]\w*(?: [A-Z]\w*)*)(?=\)| section|\.[)\"'])", text):
            if not any(h.startswith(section) for h in _headings(os.path.join(ROOT, "README.md"))):
                wrong.append(f"{path}: README's {section}")
    assert not wrong, wrong
