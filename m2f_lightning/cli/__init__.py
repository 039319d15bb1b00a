"""The commands: m2f-train/-evaluate/-predict/-doctor/-export (main.py), what each does
(commands.py), the objects a config builds (builders.py), the config's checks
(config_schema.py), the doctor and the exporter."""
