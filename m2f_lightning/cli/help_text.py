"""What `--help` lists beyond Hydra's `$APP_CONFIG_GROUPS`: each experiment with one line, read
from its file's first comment line (the experiment files are data; their comments say what each
recipe is). The help template (conf/hydra/default.yaml) calls it as `${m2f_experiments:}`."""

from pathlib import Path

RESOLVER = "m2f_experiments"


def experiment_description(path: Path) -> str:
    """The first comment line of an experiment file that is not a Hydra directive (`@package`)."""
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if not text.startswith("#"):
            if text:  # the YAML has started: no description
                break
            continue
        text = text.lstrip("#").strip()
        if text and not text.startswith("@"):
            return text
    return ""


def experiment_lines(config_dir: Path) -> str:
    """One line per `experiment/*.yaml` under `config_dir`: its name, then its description."""
    files = sorted((Path(config_dir) / "experiment").glob("*.yaml"))
    width = max((len(f.stem) for f in files), default=0)
    return "\n".join(f"  {f.stem:<{width}}  {experiment_description(f)}".rstrip() for f in files)


def register_help_resolver(config_dir: Path) -> None:
    """Make `${m2f_experiments:}` available to the help template (resolved only by `--help`)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, lambda: experiment_lines(config_dir))
