"""deepfield.nn."""
