"""deepfield.physics."""
