"""Services: the one place that coordinates work."""
