"""The paper's evaluation protocol (Table I): adapt on each support, score every query (IoU per query).

mIoU is the mean over classes of each class's mean query IoU; its 95%
confidence interval is the normal approximation over classes. The same episodes
are also scored the field's way (`summed_miou@t`: per class, summed intersection
over summed union; `fb_iou@t`), so that validation logs and reports carry both;
the field's own episodes are `training/benchmark_evaluation.py`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os

import numpy as np
import tensorflow as tf

from meta_drn_tf.data.bank import ImageBank
from meta_drn_tf.data.benchmarks import Benchmark
from meta_drn_tf.data.episodes import count_evaluation_tasks, evaluation_tasks
from meta_drn_tf.data.sampled_episodes import decoded, exhaustive_episodes, sample_episodes
from meta_drn_tf.meta import Adapter
from meta_drn_tf.meta.adapter import TASK_KEYS
from meta_drn_tf.paths import write_atomically
from meta_drn_tf.progress import bar as progress_bar
from meta_drn_tf.results.metrics import (
    THRESHOLDS,
    SummedIoU,
    areas_at_thresholds,
    bce_loss,
    binary_iou,
    mean_with_ci,
    non_finite,
    soft_iou,
)

METRICS = ("soft_iou",) + tuple(f"iou@{t}" for t in THRESHOLDS)
# The field's scores of the same episodes (summed intersection over summed union per class; FB-IoU).
SUMMED_METRICS = tuple(f"{m}@{t}" for t in THRESHOLDS for m in ("summed_miou", "fb_iou"))
PROTOCOL = "paper"


class EpisodeScorer:
    """The paper's scoring of episodes: adapt to each support, score every query.

        scorer = EpisodeScorer(adapter)
        logs = scorer(task_batch)           # a dict of (B, ...) arrays: TASK_KEYS
        logs["iou@0.5"]                     # (B, q): each query's IoU at threshold 0.5

    One compiled function, traced once per batch shape and reused (a run's validation keeps
    one scorer for the whole run).

    Args:
        adapter: the Adapter (or MetaLearner) whose inner loop adapts.
    """

    def __init__(self, adapter: Adapter):
        self.adapter = adapter
        self._function = tf.function(self._score, reduce_retracing=True, autograph=False)

    def __call__(self, task_batch: dict, inner_steps: int | None = None,
                 inner_lr: float | None = None) -> dict[str, tf.Tensor]:
        """Per-task `loss` `(B,)` and per-query `soft_iou`, `iou@0.5`, `iou@0.35` and `non_finite`
        (1.0 where the prediction holds NaN or inf; its scores are 0) `(B, q)`, plus `probabilities`
        `(B, q, H, W, 1)`. `inner_steps`, `inner_lr`: the test-time inner loop (default: training's)."""
        config = self.adapter.config
        batch = {k: tf.convert_to_tensor(task_batch[k], tf.float32) for k in TASK_KEYS}
        return self._function(batch, tf.constant(inner_steps or config.inner_steps),
                              tf.constant(inner_lr or config.inner_lr, tf.float32))

    def predict(self, task_batch: dict, inner_steps: int | None = None, inner_lr: float | None = None) -> np.ndarray:
        """The queries' foreground probabilities `(B, q, H, W)` after adapting to each support."""
        return self(task_batch, inner_steps, inner_lr)["probabilities"].numpy()[..., 0]

    def _score(self, batch, inner_steps, inner_lr):
        adapter = self.adapter
        theta = adapter.initial_weights()

        def one_task(task):
            support_images, support_masks, query_images, query_masks = task
            # The inner-step count is a tensor so one trace serves any count.
            fast = tf.while_loop(
                lambda i, w: i < inner_steps,
                lambda i, w: (i + 1, adapter.inner_step(theta, w, support_images, support_masks, i, False,
                                                        inner_lr)[0]),
                (tf.constant(0), [theta[i] for i in adapter.adapted]),
            )[1]
            logits = adapter.logits(adapter.weights_at(theta, fast, inner_steps - 1), query_images)
            probabilities = tf.sigmoid(logits)
            scores = [soft_iou(probabilities, query_masks)]
            scores += [binary_iou(probabilities, query_masks, t) for t in THRESHOLDS]
            scores += [tf.cast(non_finite(probabilities), tf.float32)]
            return bce_loss(logits, query_masks), tf.stack(scores), probabilities

        loss, scores, probabilities = tf.map_fn(
            one_task,
            tuple(batch[k] for k in TASK_KEYS),
            fn_output_signature=(tf.float32, tf.float32, tf.float32),
            parallel_iterations=adapter.parallel_tasks or 10,  # tasks at once: 1 on a CPU
        )
        logs = {"loss": loss, "soft_iou": scores[:, 0], "non_finite": scores[:, -1], "probabilities": probabilities}
        for j, t in enumerate(THRESHOLDS):
            logs[f"iou@{t}"] = scores[:, j + 1]
        return logs


@dataclasses.dataclass
class EvalResult:
    """Per-query scores of an evaluation run and their summaries."""

    class_names: list[str]
    records: list[dict]  # one per query: class, episode, loss, METRICS and the areas at each threshold
    inner_steps: int
    inner_lr: float | str

    def per_class(self) -> dict[str, dict[str, float]]:
        groups: dict[str, list[dict]] = {}
        for r in self.records:
            groups.setdefault(r["class"], []).append(r)
        return {name: {**{m: float(np.mean([r[m] for r in rows])) for m in METRICS + ("loss",)},
                       "queries": len(rows)}
                for name, rows in groups.items()}

    def summary(self) -> dict[str, float]:
        per_class = self.per_class()
        out = {"protocol": PROTOCOL, "episodes": len({r["episode"] for r in self.records}), "seed": None,
               "classes": len(per_class), "queries": len(self.records),
               "inner_steps": self.inner_steps, "inner_lr": self.inner_lr,
               "non_finite_queries": sum(int(r.get("non_finite", 0)) for r in self.records)}
        for m in METRICS + ("loss",):
            mean, ci = mean_with_ci([c[m] for c in per_class.values()])
            out[m], out[m + "_ci95"] = mean, ci
        for t in THRESHOLDS:
            summed = SummedIoU()
            for r in self.records:
                summed.add(r["class"], r[f"areas@{t}"])
            out[f"summed_miou@{t}"], out[f"fb_iou@{t}"] = summed.miou(), summed.fb_iou()
        return out


# Episodes adapted and scored per compiled call (consecutive ones of one shape): a GPU runs them at
# once (`MetaLearner.parallel_tasks`), and every device saves the per-episode host round trips.
EPISODES_PER_CALL = 8


def episode_chunks(tasks, size: int):
    """Consecutive evaluation tasks in lists of at most `size` whose tensors have the same shapes."""
    chunk = []
    for task in tasks:
        if chunk and (len(chunk) == size or task["query_images"].shape != chunk[0]["query_images"].shape
                      or task["support_images"].shape != chunk[0]["support_images"].shape):
            yield chunk
            chunk = []
        chunk.append(task)
    if chunk:
        yield chunk


def evaluate_bank(
    learner: Adapter | EpisodeScorer,
    bank: ImageBank | Benchmark,
    shots: int = 1,
    limit: int | None = None,
    inner_steps: int | None = None,
    inner_lr: float | None = None,
    progress: bool = False,
    keep_predictions: int = 0,
    episodes_per_class: int | None = None,
    episodes_per_call: int = EPISODES_PER_CALL,
    image_size: int | None = None,
) -> tuple[EvalResult, list[dict]]:
    """Runs the evaluation episodes of `bank` (at most `limit`, evenly spread;
    at most `episodes_per_class` of each class), `episodes_per_call` at a time.

    Returns the result and, for the first `keep_predictions` episodes, the
    task with its predictions (for pictures). `learner`: an adapter, or a scorer of one kept
    between calls (its compiled function is reused). `bank` may be a Benchmark: its files are
    decoded one episode at a time at `image_size` (`exhaustive_episodes`).
    """
    tasks, total = _paper_tasks(bank, shots, limit, image_size, episodes_per_class)
    return _evaluate_tasks(learner, tasks, total, bank.class_names, inner_steps, inner_lr, progress,
                           keep_predictions, episodes_per_call)


def evaluate_sampled(learner: Adapter | EpisodeScorer, benchmark: Benchmark, image_size: int, shots: int = 1,
                     episodes: int | None = None, seed: int = 0, inner_steps: int | None = None,
                     keep_predictions: int = 0) -> tuple[EvalResult, list[dict]]:
    """`evaluate_bank`'s scores of a Benchmark's seeded episodes (`sample_episodes`), decoded one at a
    time at `image_size`: a run's validation on PASCAL-5i or COCO-20i, whose folds no bank holds."""
    drawn = sample_episodes(benchmark, shots, episodes, seed)
    return _evaluate_tasks(learner, decoded(drawn, image_size), len(drawn), benchmark.class_names, inner_steps,
                           None, False, keep_predictions, EPISODES_PER_CALL)


def _evaluate_tasks(learner, tasks, total: int, class_names: list[str], inner_steps, inner_lr, progress: bool,
                    keep_predictions: int, episodes_per_call: int) -> tuple[EvalResult, list[dict]]:
    scorer = learner if isinstance(learner, EpisodeScorer) else EpisodeScorer(learner)
    learner = scorer.adapter
    bar = progress_bar(total, unit_name="episode") if progress else None
    records, kept, e = [], [], 0
    for chunk in episode_chunks(tasks, episodes_per_call):
        batch = {k: np.stack([task[k] for task in chunk]) for k in TASK_KEYS}
        logs = {k: v.numpy() for k, v in scorer(batch, inner_steps=inner_steps, inner_lr=inner_lr).items()}
        for i, task in enumerate(chunk):
            for q in range(task["query_images"].shape[0]):
                records.append(_record(task, task.get("episode", e), q, float(logs["loss"][i]),
                                       {m: float(logs[m][i][q]) for m in METRICS}, bool(logs["non_finite"][i][q]),
                                       logs["probabilities"][i][q]))
            if e < keep_predictions:
                kept.append({**task, "probabilities": logs["probabilities"][i]})
            if bar is not None:
                bar.add(1, [("soft_iou", float(np.mean(logs["soft_iou"][i])))])
            e += 1
    used_lr = f"learned ({learner.learned_rates})" if learner.learned_rates else (inner_lr or learner.config.inner_lr)
    return EvalResult(class_names, records, inner_steps or learner.config.inner_steps, used_lr), kept


def _paper_tasks(source: ImageBank | Benchmark, shots: int, limit: int | None, image_size: int | None,
                 per_class: int | None = None):
    """(tasks, how many) of the paper's episodes of a bank, or of a Benchmark's files at `image_size`."""
    if isinstance(source, Benchmark):
        episodes = exhaustive_episodes(source, shots, limit)
        return decoded(episodes, image_size), len(episodes)
    return evaluation_tasks(source, shots, limit, per_class), count_evaluation_tasks(source, shots, limit, per_class)


def _record(task: dict, episode: int, q: int, loss: float, scores: dict[str, float], non_finite: bool,
            probabilities: np.ndarray) -> dict:
    """One query's record: its scores and areas; where a label map marks pixels to ignore (255), its IoUs
    leave them out as the areas do (the soft IoU, on probabilities, counts every pixel)."""
    ignore = task["query_ignore"][q] if "query_ignore" in task else None
    record = {"class": task["class_name"], "episode": episode, "query": q, "loss": loss, **scores,
              "non_finite": non_finite, **query_areas(probabilities, task["query_masks"][q], ignore)}
    if ignore is not None and ignore.any():
        for t in THRESHOLDS:
            a = record[f"areas@{t}"]
            record[f"iou@{t}"] = float(a[0, 1] / a[1, 1]) if a[1, 1] else 1.0
    return record


def query_areas(probabilities: np.ndarray, mask: np.ndarray, ignore: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """{"areas@t": `areas(...)`} of one query `(H, W, 1)` at each threshold (None: not finite), the
    pixels under `ignore` `(H, W)` left out."""
    return {f"areas@{t}": a for t, a in areas_at_thresholds(probabilities[..., 0], mask[..., 0], ignore).items()}


def table(rows: dict[str, dict]) -> str:
    """A Table I-shaped text table: setting | mIoU@0.5 | mIoU@0.35 | soft IoU (each ± 95% CI)."""
    width = max(34, *(len(name) for name in rows))
    head = f"| {'Setting':<{width}} | {'mIoU (thresh = 0.5)':>20} | {'mIoU (thresh = 0.35)':>20} | {'soft IoU':>16} |"
    lines = [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
    for name, s in rows.items():
        cells = [f"{100 * s[m]:.2f} ± {100 * s[m + '_ci95']:.2f}" for m in ("iou@0.5", "iou@0.35", "soft_iou")]
        lines.append(f"| {name:<{width}} | {cells[0]:>20} | {cells[1]:>20} | {cells[2]:>16} |")
    return "\n".join(lines)


def non_finite_note(rows: dict[str, dict]) -> str:
    """A warning line for the rows whose predictions were not finite for some queries (scored 0), or ""."""
    bad = {title: s["non_finite_queries"] for title, s in rows.items() if s.get("non_finite_queries")}
    if not bad:
        return ""
    return "\n\nWarning: non-finite predictions (NaN/inf, an overflowed adaptation), each scored 0: " + "; ".join(
        f"{title}: {n} queries" for title, n in bad.items())


def setting_title(algorithm: str, shots: int) -> str:
    """The row title of a meta-learned network's results."""
    return f"Meta-DRN, {algorithm}, {shots}-shot"


def baseline_title(shots: int) -> str:
    """The row title of the same adaptation from a random initialisation."""
    return f"same adaptation, random init, {shots}-shot"


def copy_title(shots: int) -> str:
    """The row title of the trivial reference: the example's mask copied onto every query."""
    return f"copy the example's mask, {shots}-shot"


def copy_mask_result(bank: ImageBank | Benchmark, shots: int = 1, limit: int | None = None,
                     image_size: int | None = None) -> EvalResult:
    """The evaluation episodes scored with no network: each query's prediction is the support mask
    (with k > 1 supports, the pixels most of them mark), at the size the networks are scored at.

    A meta-learned network that does not beat this has not learned to find the object.
    """
    records = []
    for e, task in enumerate(_paper_tasks(bank, shots, limit, image_size)[0]):
        queries = task["query_masks"]
        guess = np.broadcast_to(task["support_masks"].mean(0) > 0.5, queries.shape).astype(np.float32)
        scores = {"soft_iou": soft_iou(guess, queries)}
        scores.update({f"iou@{t}": binary_iou(guess, queries, t) for t in THRESHOLDS})
        for q in range(queries.shape[0]):
            loss = float(tf.keras.losses.binary_crossentropy(queries[q].ravel(), guess[q].ravel()))
            records.append(_record(task, task.get("episode", e), q, loss, {m: float(scores[m][q]) for m in METRICS},
                                   False, guess[q]))
    return EvalResult(bank.class_names, records, 0, "none")


def evaluate_settings(
    learner: Adapter,
    baseline: Adapter | None,
    bank: ImageBank,
    shots: list[int],
    progress: bool = False,
    **kwargs,
) -> dict[str, EvalResult]:
    """Table rows: `learner` at each k in `shots`, each followed by `baseline`'s row and the copied
    mask's (if a baseline is given).

    `kwargs` go to `evaluate_bank` (limit, inner_steps, inner_lr, image_size).
    """
    results = {}
    for k in shots:
        results[setting_title(learner.config.algorithm, k)] = evaluate_bank(learner, bank, k, progress=progress,
                                                                            **kwargs)[0]
        if baseline is not None:
            results[baseline_title(k)] = evaluate_bank(baseline, bank, k, progress=progress, **kwargs)[0]
            results[copy_title(k)] = copy_mask_result(bank, k, kwargs.get("limit"), kwargs.get("image_size"))
    return results


def write_reports(results: dict[str, EvalResult], out_dir: str) -> dict[str, dict]:
    """Writes `table.md`, `per_class.csv` and `summary.json` under `out_dir`; returns the rows' summaries."""

    os.makedirs(out_dir, exist_ok=True)
    rows = {title: r.summary() for title, r in results.items()}
    first, summary = next(iter(results.values())), next(iter(rows.values()))
    text = table(rows)
    note = (non_finite_note(rows) + f"\n\n{summary['classes']} classes, {summary['queries']} queries (first row); "
            f"test-time inner loop: {first.inner_steps} step(s), rate {first.inner_lr}. "
            "mIoU = mean over classes of the class's mean query IoU; ± is the 95% confidence interval over classes. "
            f"Protocol {PROTOCOL} (Table I): {summary['episodes']} episodes, each labelled image the support once "
            "(no seed); summary.json also holds these episodes' summed mIoU and FB-IoU.\n")
    per_class = io.StringIO()
    w = csv.writer(per_class)
    w.writerow(["class", "queries", "loss", *METRICS, "setting", "protocol", "episodes"])
    for title, result in results.items():
        for name, s in result.per_class().items():
            w.writerow([name, s["queries"], f"{s['loss']:.5f}", *(f"{s[m]:.5f}" for m in METRICS), title, PROTOCOL,
                        rows[title]["episodes"]])
    # Each file whole or absent: the run being trained (or another evaluate) may write here too.
    write_atomically(os.path.join(out_dir, "table.md"), text + note)
    write_atomically(os.path.join(out_dir, "per_class.csv"), per_class.getvalue())
    write_atomically(os.path.join(out_dir, "summary.json"), json.dumps(rows, indent=1))
    print(text + note)
    return rows
