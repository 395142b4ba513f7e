"""The onedb platform: its settings model, its client and its quirks."""
