"""Deliberate breakages of the source, each of which the suite must catch.

    make mutations                                  # every breakage, then the table
    .venv/bin/python tests/mutations.py --only ema  # the breakages whose name contains "ema"

A test named after a claim ("DDP averages gradients", "resume continues from the
checkpoint") is worth something only if it fails when the claim is false. For each breakage
below, the source is copied to a temporary folder, one exact snippet of one file is replaced,
and the tests named for it run with PYTHONPATH pointing at the copy, which `python -m
torchgraft` and torchrun's workers inherit, so command-line tests see the breakage too. Each
breakage must make at least one of its tests fail.

First the named tests run once on the unbroken source and must pass: a test that fails
anyway would "catch" every breakage. A snippet that no longer occurs exactly once means the
source has moved on and the breakage must be updated; that is reported, never skipped.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 1200  # per pytest run; a breakage that hangs its tests counts as caught


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str  # relative to src/torchgraft
    old: str  # occurs exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest node ids, one of which must fail


MUTATIONS: list[Mutation] = []

# --- slice DDP: two ranks under torchrun train as one process (tests/e2e/test_distributed.py)
_DDP = "tests/e2e/test_distributed.py::test_"
MUTATIONS += [
    Mutation(
        "ddp: no gradient all-reduce (the model is never wrapped in DDP)",
        "train/engine.py",
        "            if self.distributed_run:\n                module = self._parallel(module)",
        "            if False:\n                module = self._parallel(module)",
        (f"{_DDP}one_step_of_two_ranks_is_one_step_of_one_process_on_both_shards",
         f"{_DDP}ranks_hold_identical_weights"),
    ),
    Mutation(
        "ddp: every rank gets all the data (no sharded loader)",
        "train/engine.py",
        "sharded = phase.whole_network and self.distributed_run",
        "sharded = False",
        (f"{_DDP}ranks_train_on_disjoint_shards_that_cover_the_training_split",),
    ),
    Mutation(
        "ddp: every rank gets the same shard (the sampler ignores the rank)",
        "train/distributed.py",
        "return iter(order[self.context.rank :: self.context.world_size])",
        "return iter(order[: len(self)])",
        (f"{_DDP}one_step_of_two_ranks_is_one_step_of_one_process_on_both_shards",
         f"{_DDP}ranks_train_on_disjoint_shards_that_cover_the_training_split"),
    ),
]  # fmt: skip

# --- flags slice (issue #17): each step feature made a no-op; decoding; the export contract --
_STEPS = "tests/unit/train/test_step_features.py"
_EXPORT_MODEL = (
    "tests/unit/export/test_export_model.py::"
    "test_the_exported_module_normalises_with_the_runs_mean_and_std_and_divides_by_t"
)
MUTATIONS += [
    Mutation(
        "flags: grad_clip is ignored",
        "train/loop.py",
        "nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)",
        "pass",
        (f"{_STEPS}::test_grad_clip_bounds_the_gradient_norm_a_step_applies",),
    ),
    Mutation(
        "flags: label_smoothing is ignored",
        "train/steps.py",
        "label_smoothing=train.label_smoothing or 0.0",
        "label_smoothing=0.0",
        (f"{_STEPS}::test_label_smoothing_sets_the_loss_of_a_confident_correct_prediction",),
    ),
    Mutation(
        "flags: cutmix is ignored",
        "train/steps.py",
        "chosen += [v2.CutMix(alpha=cutmix, num_classes=num_classes)] if cutmix > 0 else []",
        "chosen += []",
        (f"{_STEPS}::test_cutmix_pastes_a_box_whose_area_share_is_the_label_weight",),
    ),
    Mutation(
        "flags: ema averages nothing (the average is the raw weights)",
        "train/ema.py",
        "torch._foreach_mul_(averaged, step_decay)\n"
        "        torch._foreach_add_(averaged, torch._foreach_mul(current, 1.0 - step_decay))",
        "torch._foreach_copy_(averaged, current)",
        (f"{_STEPS}::test_ema_follows_the_warmed_up_decay_after_every_step",),
    ),
    Mutation(
        "flags: the decoder leaks an exception that is not an OSError or ValueError",
        "data/decode.py",
        "except Exception as error:  # any decoder bug",
        "except (OSError, ValueError) as error:  # any decoder bug",
        ("tests/unit/data/test_decode.py::test_every_decoder_exception_becomes_unreadable_image",),
    ),
    Mutation(
        "flags: an export drops the calibration temperature",
        "export/model.py",
        "calibrated_probabilities(self.classifier(images), self.temperature, dim=1)",
        "calibrated_probabilities(self.classifier(images), 1.0, dim=1)",
        ("tests/unit/export/test_exporter.py::test_calibration_temperature_is_inside_the_export",),
    ),
    Mutation(
        "flags: an export skips the input normalisation",
        "export/model.py",
        "calibrated_probabilities(self.classifier(images), self.temperature, dim=1)",
        "calibrated_probabilities(self.classifier.net(images.float()), self.temperature, dim=1)",
        (_EXPORT_MODEL,),
    ),
    Mutation(
        "flags: the classifier (and so every export) scales pixels to [0, 1] without mean/std",
        "models/classifier.py",
        "return (images.float() - self.mean) / self.std",
        "return images.float() / 255",
        (_EXPORT_MODEL,),
    ),
]

# --- slice: resume, checkpoints and the NaN guard (tests/unit/train/test_resume.py,
# test_checkpoint_damage.py, test_non_finite.py, test_signals.py, tests/e2e/test_resume.py)
_RESUME_TEST = (
    "tests/unit/train/test_resume.py::test_resume_continues_from_the_checkpoint_not_from_scratch"
)
_KILL_IN_WRITE_TEST = (
    "tests/unit/train/test_resume.py::"
    "test_a_kill_while_writing_a_checkpoint_resumes_from_a_whole_one"
)
_NAN_TEST = (
    "tests/unit/train/test_non_finite.py::test_a_nan_training_loss_stops_the_run_and_keeps_epoch_1"
)
MUTATIONS += [
    Mutation(
        "resume ignores the checkpoint (trains again from epoch 0 with fresh weights)",
        "train/engine.py",
        "        if checkpoint is not None:\n            self._restore(checkpoint)\n",
        "",
        (_RESUME_TEST,),
    ),
    Mutation(
        "resume restores the progress but not the weights",
        "train/engine.py",
        '        self.model.load_state_dict(checkpoint.part("model"))\n',
        "",
        (_RESUME_TEST,),
    ),
    Mutation(
        "resume restores neither the optimizer nor the schedule",
        "train/engine.py",
        "        if resuming and checkpoint is not None:",
        "        if False:",
        (_RESUME_TEST,),
    ),
    Mutation(
        "a checkpoint's index is committed before its tensors are written",
        "train/checkpoint.py",
        "    save_tensors(folder / tensors_file, tensors)\n",
        "    atomic_write_bytes(folder / INDEX_FILE, json.dumps({'tensors_file': tensors_file, "
        "'progress': progress, 'optimizer_groups': optimizer_state['param_groups'], "
        "'scheduler': _plain(scheduler.state_dict())}).encode())\n"
        "    save_tensors(folder / tensors_file, tensors)\n",
        (_KILL_IN_WRITE_TEST,),
    ),
    Mutation(
        "the previous checkpoint's tensors are removed before the new index is committed",
        "train/checkpoint.py",
        "    atomic_write_bytes(folder / INDEX_FILE, json.dumps(index, indent=1).encode())\n",
        "    if previous and previous != tensors_file:\n"
        "        (folder / previous).unlink(missing_ok=True)\n"
        "    atomic_write_bytes(folder / INDEX_FILE, json.dumps(index, indent=1).encode())\n",
        (_KILL_IN_WRITE_TEST,),
    ),
    Mutation(
        "a truncated checkpoint index crashes with a traceback",
        "train/checkpoint.py",
        "    except (OSError, ValueError) as error:",
        "    except OSError as error:",
        (
            "tests/unit/train/test_checkpoint_damage.py::"
            "test_a_damaged_last_json_is_refused_in_one_line[truncated]",
        ),
    ),
    Mutation(
        "a NaN loss overwrites the best weights (the guard runs after the callbacks save)",
        "train/engine.py",
        "            refuse_non_finite(self.records[-1], self.run.path)"
        "  # before any callback saves\n"
        "            self.position = (index, self.position[1] + 1)\n"
        '            self._call("on_epoch_end", self.records[-1])\n',
        "            self.position = (index, self.position[1] + 1)\n"
        '            self._call("on_epoch_end", self.records[-1])\n'
        "            refuse_non_finite(self.records[-1], self.run.path)\n",
        (_NAN_TEST,),
    ),
    Mutation(
        "the NaN guard disabled",
        "train/engine.py",
        "    if not bad:\n        return\n    losses =",
        "    return\n    losses =",
        (_NAN_TEST,),
    ),
    Mutation(
        "a NaN score can become the best epoch",
        "train/callbacks.py",
        "        if not math.isfinite(self.score(monitor)):\n            return False\n",
        "",
        ("tests/unit/train/test_non_finite.py::test_a_nan_score_never_becomes_the_best",),
    ),
    Mutation(
        "SIGTERM is not turned into an interrupt",
        "train/signals.py",
        "previous = signal.signal(signal.SIGTERM, _raise_terminated)",
        "previous = signal.getsignal(signal.SIGTERM)",
        (
            "tests/unit/train/test_signals.py::"
            "test_sigterm_interrupts_like_ctrl_c_and_the_old_handler_comes_back",
        ),
    ),
    Mutation(
        "an interrupted run does not say how to resume",
        "train/recipe.py",
        '            logger.warning("%s", how_to_resume(run.path))\n',
        "            pass\n",
        (
            "tests/e2e/test_resume.py::test_a_signal_during_an_epoch_leaves_a_run_that_resumes_"
            "to_the_uninterrupted_weights[sigint]",
        ),
    ),
]


@dataclass(frozen=True)
class Outcome:
    mutation: Mutation
    verdict: str  # caught, MISSED, STALE
    detail: str  # the test that failed, or why it is stale
    seconds: float


def mutated_source(mutation: Mutation, folder: Path) -> Path | str:
    """A copy of src/ with the breakage applied, or why the breakage no longer applies."""
    copy = folder / "src"
    shutil.copytree(ROOT / "src", copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / "torchgraft" / mutation.file
    if not target.is_file():
        return f"{mutation.file} does not exist"
    text = target.read_text()
    count = text.count(mutation.old)
    if count != 1:
        return f"the snippet occurs {count} times in {mutation.file}"
    target.write_text(text.replace(mutation.old, mutation.new))
    return copy


def run_tests(tests: tuple[str, ...], source: Path) -> tuple[int, str]:
    """pytest on `tests` with `source` first on the import path; (exit code, first failure)."""
    env = {**os.environ, "PYTHONPATH": str(source), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-rf", "-p", "no:cacheprovider",
               "-o", "addopts=", *tests]  # fmt: skip
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=TIMEOUT_S)  # fmt: skip
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {TIMEOUT_S} s"
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", done.stdout, flags=re.MULTILINE)
    return done.returncode, failed[0] if failed else done.stdout.strip().splitlines()[-1:][0]


def check(mutation: Mutation) -> Outcome:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="torchgraft-mutation-") as folder:
        source = mutated_source(mutation, Path(folder))
        if isinstance(source, str):
            return Outcome(mutation, "STALE", source, 0.0)
        code, detail = run_tests(mutation.tests, source)
    verdict = "MISSED" if code == 0 else "caught"
    return Outcome(mutation, verdict, detail, time.monotonic() - started)


def baseline_failures(mutations: list[Mutation]) -> str | None:
    """The named tests on the unbroken source: None when they all pass."""
    tests = tuple(dict.fromkeys(test for mutation in mutations for test in mutation.tests))
    code, detail = run_tests(tests, ROOT / "src")
    return None if code == 0 else detail


def table(outcomes: list[Outcome]) -> str:
    lines = ["| breakage | file | result | caught by | seconds |"]
    lines.append("| --- | --- | --- | --- | --- |")
    for outcome in outcomes:
        m = outcome.mutation
        lines.append(f"| {m.name} | `{m.file}` | {outcome.verdict} | `{outcome.detail}` | "
                     f"{outcome.seconds:.0f} |")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--only", help="run the breakages whose name contains this text")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the run of the named tests on the unbroken source")  # fmt: skip
    arguments = parser.parse_args()
    chosen = [m for m in MUTATIONS if not arguments.only or arguments.only in m.name]
    if not chosen:
        print(f"no breakage's name contains {arguments.only!r}", file=sys.stderr)
        return 2
    if not arguments.no_baseline:
        print(f"the {len(chosen)} breakages' tests on the unbroken source...", flush=True)
        failure = baseline_failures(chosen)
        if failure is not None:
            print(f"a test fails without any breakage: {failure}. Fix it first.", file=sys.stderr)
            return 1
    outcomes = []
    for mutation in chosen:
        print(f"breaking: {mutation.name}...", flush=True)
        outcomes.append(check(mutation))
        print(f"  {outcomes[-1].verdict}: {outcomes[-1].detail}", flush=True)
    print(table(outcomes))
    return 0 if all(outcome.verdict == "caught" for outcome in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
