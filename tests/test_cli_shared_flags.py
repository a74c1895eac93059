"""Flags that mean the same thing in several commands parse and check the same way (issue 12)."""

import pytest
import torch

from nets import evaluate, sample, train_classifier
from nets.checkpoint import FORMAT_VERSION, CheckpointError, load_checkpoint, save_checkpoint
from nets.training import flags as train_flags  # nets.train's parser

COMMANDS = {"nets.train": train_flags, "nets.sample": sample, "nets.evaluate": evaluate,
            "nets.train_classifier": train_classifier}
SHARED = ("--seed", "--device", "--data-dir", "--precision")


def action(module, flag):
    found = [a for a in module.build_parser()._actions if flag in a.option_strings]
    return found[0] if found else None


@pytest.mark.parametrize("flag", SHARED)
def test_a_shared_flag_has_one_type_default_and_choices_in_every_command(flag):
    actions = {name: action(m, flag) for name, m in COMMANDS.items() if action(m, flag)}
    assert len(actions) >= 2, flag
    signatures = {(getattr(a.type, "__qualname__", a.type), a.default, tuple(a.choices or ()))
                  for a in actions.values()}
    assert len(signatures) == 1, {name: (a.type, a.default, a.choices) for name, a in actions.items()}


def test_device_defaults_to_auto_everywhere():
    defaults = {name: action(m, "--device").default for name, m in COMMANDS.items()}
    assert defaults == dict.fromkeys(COMMANDS, "auto")


@pytest.mark.parametrize("name", COMMANDS)
@pytest.mark.parametrize("seed", ["-1", str(2**32), "abc"])
def test_a_seed_out_of_range_exits_2_in_every_command(name, seed, capsys):
    with pytest.raises(SystemExit) as info:
        COMMANDS[name].build_parser().parse_args(["--seed", seed])
    assert info.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "--seed" in line


def test_a_checkpoint_of_another_format_version_is_refused_by_name(tmp_path):
    path = save_checkpoint({"model": {"w": torch.zeros(2)}, "config": {}}, tmp_path / "c.pt")
    assert load_checkpoint(path)["format_version"] == FORMAT_VERSION
    state = torch.load(path, weights_only=True)
    torch.save({**state, "format_version": FORMAT_VERSION + 1}, path)
    with pytest.raises(CheckpointError, match=f"format version {FORMAT_VERSION + 1}"):
        load_checkpoint(path)
