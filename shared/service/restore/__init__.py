"""Restores: a done backup put back into its platform, as a job like a backup."""
