"""Training and evaluation loops shared by every command, and the float-checkpoint cache."""
