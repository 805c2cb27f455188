"""deepfield.report."""
