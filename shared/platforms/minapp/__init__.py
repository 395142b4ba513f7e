"""The minapp platform: its settings model, its client and its quirks."""
