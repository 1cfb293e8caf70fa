"""The field's protocol (HSNet's, which HSNet, VAT, DCAMA, Matcher and PATNet report): seeded random
episodes of a Benchmark, scored per class by summed intersection over summed union (mIoU) and by
FB-IoU, as the mean ± standard deviation over seeds.

    result = evaluate_episodes(EpisodeScorer(learner).predict, sample_episodes(benchmark, 1, seed=0), 224)
    result.summary()["miou@0.5"], result.summary()["fb_iou@0.5"]
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections.abc import Callable

import cv2
import numpy as np

from meta_drn_tf.data.benchmarks import Benchmark
from meta_drn_tf.data.sampled_episodes import Episode, decoded, sample_episodes
from meta_drn_tf.meta import Adapter
from meta_drn_tf.paths import write_atomically
from meta_drn_tf.progress import bar as progress_bar
from meta_drn_tf.results.metrics import THRESHOLDS, SummedIoU, areas_at_thresholds
from meta_drn_tf.training.evaluation import EpisodeScorer, baseline_title, copy_title, episode_chunks, setting_title

PROTOCOL = "hsnet"
FIELD_METRICS = tuple(f"{m}@{t}" for t in THRESHOLDS for m in ("miou", "fb_iou"))
EPISODES_PER_CALL = 8


@dataclasses.dataclass
class FieldResult:
    """The scores of one seed's episodes: a SummedIoU per threshold."""

    seed: int
    episodes: int
    shots: int
    original_size: bool
    scores: dict[float, SummedIoU]
    non_finite: int = 0

    def summary(self) -> dict:
        out = {"protocol": PROTOCOL, "seed": self.seed, "episodes": self.episodes, "shots": self.shots,
               "scored_at": "each mask's own size" if self.original_size else "the network's input size",
               "classes": len(self.scores[THRESHOLDS[0]].counts), "non_finite_queries": self.non_finite}
        for t in THRESHOLDS:
            out[f"miou@{t}"], out[f"fb_iou@{t}"] = self.scores[t].miou(), self.scores[t].fb_iou()
        return out


def copied_support_mask(batch: dict) -> np.ndarray:
    """The trivial prediction: the pixels most of an episode's support masks mark, for its query.
    Shapes: a batch of tasks -> `(B, q, S, S)`."""
    guess = (batch["support_masks"].mean(axis=1) > 0.5).astype(np.float32)[:, None, ..., 0]
    return np.broadcast_to(guess, batch["query_masks"].shape[:-1])


def _score_query(scores: dict[float, SummedIoU], task: dict, probabilities: np.ndarray) -> bool:
    """Adds one query's areas at every threshold; False when its prediction was not finite."""
    mask, ignore = task["query_masks"][0, ..., 0], task["query_ignore"][0]
    if "query_mask_original" in task:
        mask, ignore = task["query_mask_original"], task["query_ignore_original"]
        probabilities = cv2.resize(probabilities, mask.shape[::-1], interpolation=cv2.INTER_LINEAR)
    for t, counts in areas_at_thresholds(probabilities, mask, ignore).items():
        scores[t].add(task["class_name"], counts)
    return bool(np.isfinite(probabilities).all())


def evaluate_episodes(predict: Callable[[dict], np.ndarray], episodes: list[Episode], size: int, *,
                      seed: int = 0, shots: int = 1, original_size: bool = False,
                      progress: bool = False) -> FieldResult:
    """Scores `episodes`, decoded a few ahead and `EPISODES_PER_CALL` at a time.

    Args:
        predict: a batch of tasks -> the queries' foreground probabilities `(B, q, S, S)`
            (`EpisodeScorer.predict`, or `copied_support_mask`).
        episodes: from `sample_episodes`.
        size: the network's input size S.
        seed, shots: what drew them (for the reports).
        original_size: score the probabilities upsampled to each query mask's own size.
    """
    scores = {t: SummedIoU() for t in THRESHOLDS}
    bar = progress_bar(len(episodes), unit_name="episode") if progress else None
    non_finite = 0
    for chunk in episode_chunks(decoded(episodes, size, original_size), EPISODES_PER_CALL):
        batch = {k: np.stack([task[k] for task in chunk]) for k in
                 ("support_images", "support_masks", "query_images", "query_masks")}
        probabilities = np.asarray(predict(batch))
        for task, p in zip(chunk, probabilities):
            non_finite += not _score_query(scores, task, p[0])
        if bar is not None:
            bar.add(len(chunk))
    return FieldResult(seed, len(episodes), shots, original_size, scores, non_finite)


def row_summary(results: list[FieldResult]) -> dict:
    """One table row over seeds: each metric's mean and standard deviation (0 for one seed), and the
    seeds and episode counts that produced it."""
    summaries = [r.summary() for r in results]
    out = {k: summaries[0][k] for k in ("protocol", "episodes", "shots", "scored_at", "classes")}
    out["seeds"] = [r.seed for r in results]
    out["non_finite_queries"] = sum(r.non_finite for r in results)
    for m in FIELD_METRICS:
        values = [s[m] for s in summaries]
        out[m], out[m + "_std"] = float(np.mean(values)), float(np.std(values))
    return out


def table(rows: dict[str, dict]) -> str:
    """setting | mIoU and FB-IoU at each threshold (± the standard deviation over seeds, if several)."""
    width = max(34, *(len(name) for name in rows))
    titles = [f"{'mIoU' if m.startswith('miou') else 'FB-IoU'} ({m.split('@')[1]})" for m in FIELD_METRICS]
    head = f"| {'Setting':<{width}} | " + " | ".join(f"{t:>15}" for t in titles) + " |"
    lines = [head, "|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|"]
    for name, s in rows.items():
        cells = [f"{100 * s[m]:.2f}" + (f" ± {100 * s[m + '_std']:.2f}" if len(s["seeds"]) > 1 else "")
                 for m in FIELD_METRICS]
        lines.append(f"| {name:<{width}} | " + " | ".join(f"{c:>15}" for c in cells) + " |")
    return "\n".join(lines)


def note(benchmark: str, rows: dict[str, dict]) -> str:
    """What produced the table: the benchmark, the protocol, the seeds and the episodes."""
    s = next(iter(rows.values()))
    seeds = s["seeds"]
    seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}-{seeds[-1]}, ± their standard deviation"
    return (f"\n\n{benchmark}: protocol {PROTOCOL} (the field's): {s['episodes']} seeded random {s['shots']}-shot "
            f"episodes per seed ({seed_text}), {s['classes']} classes, scored at {s['scored_at']}. mIoU = mean over "
            "classes of the class's summed intersection / summed union; FB-IoU = mean of the foreground's and "
            "the background's IoU, each summed over all classes; pixels labelled 255 are ignored.\n")


def write_reports(benchmark: str, rows: dict[str, dict], per_class: dict[str, list[FieldResult]],
                  out_dir: str) -> None:
    """`table_hsnet.md`, `per_class_hsnet.csv` and `summary_hsnet.json` under `out_dir` (beside the
    paper protocol's `table.md`, ...), each naming the protocol, seeds and episode counts."""
    os.makedirs(out_dir, exist_ok=True)
    text = table(rows) + note(benchmark, rows)
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["class", "setting", "protocol", "seed", "episodes", *(f"iou@{t}" for t in THRESHOLDS)])
    for title, results in per_class.items():
        for r in results:
            ious = [r.scores[t].per_class() for t in THRESHOLDS]
            for name in ious[0]:
                w.writerow([name, title, PROTOCOL, r.seed, r.episodes, *(f"{i[name]:.5f}" for i in ious)])
    write_atomically(os.path.join(out_dir, "table_hsnet.md"), text)
    write_atomically(os.path.join(out_dir, "per_class_hsnet.csv"), out.getvalue())
    write_atomically(os.path.join(out_dir, "summary_hsnet.json"),
                     json.dumps({"benchmark": benchmark, "rows": rows}, indent=1))
    print(text)


def evaluate_field_settings(learner: Adapter, baseline: Adapter | None, benchmark: Benchmark, shots: list[int],
                            size: int, seeds: list[int], *,
                            episodes: int | None = None, original_size: bool = False,
                            inner_steps: int | None = None, inner_lr: float | None = None,
                            progress: bool = False) -> tuple[dict[str, dict], dict[str, list[FieldResult]]]:
    """Table rows of the field's protocol on `benchmark`: `learner` at each k in `shots`, each followed
    (with a `baseline`) by the baseline's row and the copied support mask's; every row over the same
    episodes of each seed. Returns the rows' summaries and each row's results per seed."""
    def adapted(adapter):
        scorer = EpisodeScorer(adapter)
        return lambda batch: scorer.predict(batch, inner_steps, inner_lr)

    rows, results = {}, {}
    learned, random_init = adapted(learner), baseline and adapted(baseline)  # one trace each, for every k
    for k in shots:
        predictors = {setting_title(learner.config.algorithm, k): learned}
        if baseline is not None:
            predictors[baseline_title(k)] = random_init
            predictors[copy_title(k)] = copied_support_mask
        drawn = {seed: sample_episodes(benchmark, k, episodes, seed) for seed in seeds}
        for title, predict in predictors.items():
            if progress:
                print(f"{title}: {len(seeds)} seed(s) of {len(drawn[seeds[0]])} episodes")
            results[title] = [evaluate_episodes(predict, drawn[seed], size, seed=seed, shots=k,
                                                original_size=original_size, progress=progress) for seed in seeds]
            rows[title] = row_summary(results[title])
    return rows, results
