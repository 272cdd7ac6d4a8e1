"""A tampered checkpoint through `rlhf-ray run` (in-process `cli.main`, the tiny SFT stage): a pickle planted in a run
directory's checkpoint ends the resume with one `error:` line naming the file, and runs nothing."""

import os
import shutil
from pathlib import Path

import torch

from rlhf_ray import cli


class _Touch:
    """Unpickling this runs `touch marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_planted_in_a_checkpoint_ends_the_resume_in_one_error_line(ray_session, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["run", "configs/tiny/sft.yaml", "train.max_steps=2", "train.checkpoint_every=1", "--run-dir", str(run_dir)]
    assert cli.main(args) == 0
    shutil.rmtree(run_dir / "final" / "sft")  # unfinished again: the same command resumes from the step-2 checkpoint
    folder = run_dir / "checkpoints" / "sft" / "step_000002" / "learner" / "deepspeed"
    target = folder / (folder / "latest").read_text().strip() / "mp_rank_00_model_states.pt"
    marker = tmp_path / "pwned"
    torch.save({"module": {}, "optimizer": _Touch(marker)}, target)
    capsys.readouterr()
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith(f"error: sft: resume: raised UnsafeCheckpoint: refused to unpickle {target}: it names "
                                "posix.system; "), err
    assert not marker.exists()
