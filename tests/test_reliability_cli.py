"""Issue #6, item 7: every flag of `python -m nets.train` is range-checked at entry.

A bad value exits 2 with ONE line on stderr naming the flag, before any training (and, for all
but --batch-size, whose bound is the number of images, before the data is read). Run in-process
through `train.main` (fast). Real `python -m nets.train` processes exit the same way for a bad
--data-dir (tests/test_reliability.py, data missing offline) and a bad --resume
(tests/test_reliability_checkpoint.py, a checkpoint that would run code).
"""

import re

import pytest
import torch
from conftest import tiny_flags

from nets import train
from nets.training.flags import build_parser

TINY = [*tiny_flags(), "--max-steps", "1"]

# flag -> bad values. "FILE" is a regular file, "FILE/run" a path under it, "EMPTY" an empty
# folder, "MISSING" a path that does not exist; a value None means the flag alone (store_true
# flags are given "=1", which they refuse).
BAD = {
    "--dataset": ["no-such-set", "EMPTY", "FILE"],  # EMPTY: a folder without images
    "--image-size": ["0", "7", "31", "x"],  # 31: the U-Net's two levels cannot halve it
    "--channels": ["2", "0", "rgb"],
    "--data-dir": ["FILE"],
    "--split": ["validation"],
    "--limit": ["0", "-3", "ten", "1.5"],
    "--holdout": ["-1", "1.5", "10000"],  # 10000: the whole test split, nothing left to train on
    "--epochs": ["0", "x"],
    "--max-steps": ["0", "-1"],
    "--max-minutes": ["0", "-1", "nan", "inf"],
    "--batch-size": ["0", "65"],  # 65 > the 64 images of --limit
    "--lr": ["0", "-1e-3", "nan", "inf", "1e31"],
    "--warmup-steps": ["-1", "2.5"],
    "--lr-schedule": ["linear", "Cosine", ""],
    "--weight-decay": ["-0.1", "1.5", "nan"],
    "--grad-clip": ["0", "-1", "nan"],
    "--ema-decay": ["1", "-0.1", "1.01"],
    "--schedule": ["quadratic"],
    "--timesteps": ["0", "-50"],
    "--objective": ["score"],
    "--loss-weighting": ["min_snr", "snr"],
    "--min-snr-gamma": ["0", "-1", "nan", "inf"],
    "--conditional": ["=1"],
    "--no-conditional": ["=1"],
    "--label-dropout": ["1", "-0.5"],
    "--base-channels": ["0", "3"],  # 3: not divisible by the 8 GroupNorm groups
    "--channel-mults": ["", "a,b", "0", "1,,2", "1,2,2,2"],  # 1,2,2,2: 28 -> 14 -> 7 -> 3.5
    "--num-res-blocks": ["0"],
    "--attention-resolutions": ["", "a", "10", "7,"],  # sizes of this U-Net (mults 1,2): 28, 14
    "--dropout": ["1", "-0.1"],
    "--seed": ["-1", str(2**32), "abc"],
    "--device": ["tpu", "meta", "cuda:abc"] + ([] if torch.cuda.is_available() else ["cuda"]),
    "--compile": ["=1"],
    "--preview-every": ["0", "-1m", "0m", "x", "2.5"],
    "--no-preview": ["=1"],
    "--precision": ["fp16", "BF16", ""],
    "--dist-timeout": ["0", "-5", "nan"],
    "--run-dir": ["FILE/run", "/proc/ddpm-run"],
    "--resume": ["MISSING", "EMPTY", "FILE"],
    "--checkpoint-every": ["0"],
    "--keep-checkpoints": ["=1"],
    "--log-every": ["0"],
    "--num-samples": ["0"],
    "--sample-steps": ["0", "51"],  # 51 > --timesteps 50
    "--no-figures": ["=1"],
    "--redo-figures": ["=1"],
}
CASES = [(flag, value) for flag, values in BAD.items() for value in values]


def test_every_flag_of_nets_train_has_bad_values_tested():
    usage = build_parser().format_usage()  # every flag, once; the help text would name flags too
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", usage)) - {"--help"}
    assert flags == set(BAD)


@pytest.fixture
def paths(tmp_path):
    (tmp_path / "FILE").write_text("not a folder, not a checkpoint")
    (tmp_path / "EMPTY").mkdir()
    return tmp_path


def argv_for(flag: str, value: str, tmp_path, data_dir) -> list[str]:
    value = value.replace("FILE", str(tmp_path / "FILE")).replace("EMPTY", str(tmp_path / "EMPTY"))
    value = value.replace("MISSING", str(tmp_path / "missing"))
    args = [*TINY, "--data-dir", str(data_dir), "--run-dir", str(tmp_path / "run")]
    bad = [flag + value] if value.startswith("=") else [flag, value]
    return args + bad  # argparse: the last occurrence wins


@pytest.mark.parametrize(("flag", "value"), CASES, ids=[f"{f}={v}" for f, v in CASES])
def test_a_bad_value_exits_2_with_one_line_naming_the_flag(flag, value, paths, real_mnist_dir,
                                                           capsys):
    with pytest.raises(SystemExit) as info:
        train.main(argv_for(flag, value, paths, real_mnist_dir))
    assert info.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert flag in lines[0] and "error" in lines[0]
    assert not (paths / "run" / "checkpoint.pt").exists()
