"""`--help` of every command: what it does, the config groups with their options, every
experiment with its one-line description, three examples; not the composed config (that is
`--cfg job`)."""

import sys
from pathlib import Path

import pytest

from m2f_lightning.cli import main as cli
from m2f_lightning.cli.help_text import experiment_description

CONF = Path(cli.CONFIG_DIR)
COMMANDS = {
    "train_main": "m2f-train",
    "evaluate_main": "m2f-evaluate",
    "predict_main": "m2f-predict",
    "doctor_main": "m2f-doctor",
    "export_main": "m2f-export",
}


@pytest.mark.parametrize("entry", COMMANDS)
def test_help_lists_groups_experiments_and_examples_not_the_config(
    entry: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(sys, "argv", [COMMANDS[entry], "--help"])
    with pytest.raises(SystemExit) as done:
        getattr(cli, entry)()
    assert done.value.code in (0, None)
    text = capsys.readouterr().out
    assert text.startswith(f"{COMMANDS[entry]}"), text[:200]
    groups = sorted(
        p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra" and any(p.glob("*.yaml"))
    )
    for group in groups:
        options = ", ".join(sorted(f.stem for f in (CONF / group).glob("*.yaml")))
        assert f"{group}: {options}\n" in text, group
    experiments = sorted((CONF / "experiment").glob("*.yaml"))
    assert len(experiments) > 10
    for path in experiments:
        line = next(line for line in text.splitlines() if line.split()[:1] == [path.stem])
        description = experiment_description(path)
        assert description and line.endswith(description), (path.name, line)
    examples = text.split("== Examples ==\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert len(examples) == 3, examples
    assert all(e.split()[0] in (COMMANDS[entry], "python") for e in examples), examples
    assert "--cfg job" in text
    # the composed config (what Hydra's stock help prints) is not there
    for key in ("num_queries:", "hidden_dim:", "lr_multiplier:", "_target_:"):
        assert key not in text, key
    assert len(text.splitlines()) < 80


def test_an_experiment_description_is_its_first_comment_line(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("# @package _global_\n# A recipe. Paper: PQ 1.0.\n# more\ndefaults: []\n")
    assert experiment_description(path) == "A recipe. Paper: PQ 1.0."
    path.write_text("# @package _global_\ntrainer: {}\n# late comment\n")
    assert experiment_description(path) == ""
