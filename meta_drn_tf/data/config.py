"""`DataConfig`: where the images come from and the shape of a task (the `data` section of `RunConfig`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from meta_drn_tf.settings import Settings, setting


@dataclasses.dataclass(frozen=True)
class DataConfig(Settings):
    """The dataset and the tasks drawn from it."""

    data_dir: str = setting("", "FSS-1000 (or a folder in its layout: ROOT/<class>/<n>.jpg + <n>.png). "
                                "Empty: the embedded synthetic dataset.")
    dataset: str = setting("fss1000", "What --data_dir holds: fss1000 (or a folder in its layout), or pascal5i or "
                                      "coco20i in their own layouts, trained on the classes of the other folds than "
                                      "--fold and validated on --fold's, as the field does (docs/field.md).",
                           choices=("fss1000", "pascal5i", "coco20i"))
    fold: int = setting(0, "pascal5i, coco20i: the fold (0-3) whose classes are held out.", minimum=0)
    fss_split: str = setting("paper", "FSS-1000's classes: paper (700 train / 60 validation / 240 test, the "
                             "paper's) or field (520 / 240 / 240, as HSNet and the methods after it train; the "
                             "same 240 test classes).", choices=("paper", "field"))
    val_classes_file: str = setting("", "Optional class list (one a line) for validation; overrides the split.")
    test_classes_file: str = setting("", "Optional class list (one a line) for testing; overrides the split.")
    skip_bad_files: bool = setting(False, "Train on the usable images when some image/mask files cannot be used "
                                          "(they are listed and counted); default: stop and list them.")
    synthetic_classes: int = setting(100, "Object families in the synthetic dataset (no --data_dir).")
    synthetic_images: int = setting(10, "Images per synthetic class.", minimum=1)
    shots: int = setting(1, "Support images per task (k).", minimum=1)
    queries: int = setting(5, "Query images per training task (q).", minimum=1)

    def _rules(self) -> Iterator[tuple[str, str]]:
        if self.dataset != "fss1000" and not self.data_dir:
            yield "dataset", f"{self.dataset} is read from --data_dir: give where it is"
        if self.fold > 3:
            yield "fold", "folds are 0 to 3"
        for name in ("val_classes_file", "test_classes_file"):
            if getattr(self, name) and not self.data_dir:
                yield name, "lists classes of a --data_dir dataset; the synthetic dataset's split is fixed"
        if self.synthetic_classes < 3:
            yield "synthetic_classes", "must be at least 3 (train/val/test split)"

    @property
    def split_files(self) -> dict[str, str] | None:
        """The class lists that override the split, by split name ("val", "test")."""
        files = {k: getattr(self, f"{k}_classes_file") for k in ("val", "test") if getattr(self, f"{k}_classes_file")}
        return files or None

    @property
    def validation_list(self) -> str:
        """The packaged list of FSS-1000's validation classes `fss_split` names."""
        return {"paper": "fss1000_val", "field": "fss1000_field_val"}[self.fss_split]
