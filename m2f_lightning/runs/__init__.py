"""A run's lifecycle: its folder, lock and log file, resume and pre-emption, precision,
the optimiser and schedule, the W&B run."""
