"""deepfield.train."""
