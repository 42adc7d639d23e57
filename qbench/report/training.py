"""Did each model train? Trainings whose loss ended far above where it started.

A training that diverges to a non-finite loss stops and its row says
``diverged``. A training can also collapse without a non-finite value: the loss
climbs by orders of magnitude, the model ends at a few dB, and its row is
``ok`` with numbers that are measured correctly and mean nothing about the
surrogate's rate-distortion performance. Such rows are kept (they are what
the training produced), and the report says which they are.

The test reads ``history.csv`` (the training loss every ``log_every`` steps,
the first record after step 1, the last after the final step): a training is
*collapsed* when its last logged loss exceeds :data:`LOSS_RISE` times its first.
Both are single-batch losses, so the factor is wide: over the 500 fine-tuning
jobs of the committed runs that trained normally the largest ratio was 2.3,
and the collapses this check was written for ended 8.6 to 3e8 times above
their start.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

#: The factor by which the last logged training loss must exceed the first for the
#: training to be reported as collapsed.
LOSS_RISE = 4.0


def collapsed_trainings(run_dir: Path, ok: pd.DataFrame) -> tuple[list[str], int]:
    """``(notes, collapsed)``: a note for each job of ``ok`` whose logged training loss
    ended above :data:`LOSS_RISE` times its first value, and how many they are (none
    without ``history.csv``; a history that cannot be parsed is one note, and no count)."""
    path = Path(run_dir) / "history.csv"
    if not path.is_file() or ok.empty or "job_id" not in ok.columns:
        return [], 0
    try:
        history = pd.read_csv(path)
    except pd.errors.EmptyDataError:  # a run that logged no training step
        return [], 0
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        return [f"{path}: not read ({type(exc).__name__}); no training checked for collapse"], 0
    if not {"job_id", "step", "loss"} <= set(history.columns):
        return [], 0
    history = history[history["job_id"].isin(set(ok["job_id"]))]
    history = history.dropna(subset=["loss"]).sort_values(["job_id", "step"])
    notes = []
    rows = ok.drop_duplicates("job_id").set_index("job_id")
    for job_id, h in history.groupby("job_id", sort=True):
        first, last = h.iloc[0], h.iloc[-1]
        if len(h) < 2 or not first["loss"] > 0 or last["loss"] <= LOSS_RISE * first["loss"]:
            continue
        r = rows.loc[job_id]
        notes.append(
            f"job {job_id} ({r.get('backbone', '?')}, {r['quantizer']}, lambda={r['lambda']}, "
            f"seed={r['seed']}): **collapsed in training**: its loss ended at "
            f"{last['loss']:.4g} (step {int(last['step'])}), {last['loss'] / first['loss']:.3g} "
            f"times its first logged value {first['loss']:.4g} (step {int(first['step'])}), "
            f"without a non-finite value; its points are included as measured (history.csv)"
        )
    return notes, len(notes)
