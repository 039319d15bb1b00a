"""The commands: m2f-train/-evaluate/-predict/-doctor/-export (main.py), what each does
(commands.py), the objects a config builds (builders.py), the config's checks
(config_schema.py), the doctor and the exporter."""

from ..runs import early_signal

# before any command imports torch: a SLURM rank told to stop (SIGUSR1) while it is still starting
# keeps the signal for its command instead of dying of it (runs/early_signal.py)
early_signal.hold()
