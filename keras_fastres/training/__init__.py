"""Training runs: the configuration, the loop under a distribution strategy, backups and the
run lock, fine-tuning, and finished runs compared and plotted."""
