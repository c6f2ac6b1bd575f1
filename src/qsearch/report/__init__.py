"""Terminal output (rich progress bars and tables) and figures."""
