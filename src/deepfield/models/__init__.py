"""deepfield.models."""
