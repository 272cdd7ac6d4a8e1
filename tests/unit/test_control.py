"""`rlhf-ray scale`'s control channel (runtime/control.py) and the PPO driver's reading of it: the asks refused
before anything is written, the file merged and read back, and the size a gauge reports."""

import json

import pytest

from rlhf_ray.cli import main
from rlhf_ray.runtime import control
from rlhf_ray.runtime.monitor import gauge_of


def test_asks_are_parsed_and_learners_refused_with_the_reason():
    assert control.parse(["generator=2", "reward_fn=3"]) == {"generator": 2, "reward_fn": 3}
    with pytest.raises(control.ControlError, match="learner counts stay fixed.*torch.distributed group"):
        control.parse(["policy=2"])
    with pytest.raises(control.ControlError, match="expected ROLE=N with ROLE one of generator, reference"):
        control.parse(["generators=2"])
    for bad in ("generator=0", "generator=-1", "generator=two", "generator=1.5"):
        with pytest.raises(control.ControlError, match="whole number >= 1"):
            control.parse([bad])


def test_the_file_states_the_wanted_size_merged_and_read_back(tmp_path):
    assert control.read(tmp_path) == {}
    assert control.ask(tmp_path, {"generator": 2}) == {"generator": 2}
    assert control.ask(tmp_path, {"reference": 1, "generator": 3}) == {"generator": 3, "reference": 1}
    assert control.read(tmp_path) == {"generator": 3, "reference": 1}
    assert [p.name for p in tmp_path.iterdir()] == [control.FILE]  # written whole: no temp file left
    (tmp_path / control.FILE).write_text('{"policy": 2}')
    with pytest.raises(control.ControlError, match="learner counts stay fixed"):
        control.read(tmp_path)
    (tmp_path / control.FILE).write_text("{")
    with pytest.raises(control.ControlError, match="not JSON"):
        control.read(tmp_path)


def test_the_cli_writes_into_a_run_directory_only(tmp_path, capsys):
    assert main(["scale", str(tmp_path), "policy=2"]) == 1
    assert "learner counts stay fixed" in capsys.readouterr().err
    assert main(["scale", str(tmp_path), "generator=2"]) == 1  # no config.yaml: not a run directory
    assert "not a run directory" in capsys.readouterr().err and not (tmp_path / control.FILE).exists()
    (tmp_path / "config.yaml").write_text("name: x\n")
    assert main(["scale", str(tmp_path), "generator=2"]) == 0
    assert json.loads((tmp_path / control.FILE).read_text()) == {"generator": 2}


def test_fleet_sizes_become_one_gauge_with_a_role_tag():
    assert gauge_of("fleet_size_generator") == ("rlhf_fleet_size", {"role": "generator"})
    assert gauge_of("fleet_size_reward_fn") == ("rlhf_fleet_size", {"role": "reward_fn"})
    assert gauge_of("reward_mean") == ("rlhf_reward_mean", {})
