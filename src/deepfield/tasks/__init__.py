"""deepfield.tasks."""
