"""deepfield.data."""
