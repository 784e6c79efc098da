"""The training engine shared by teacher and student."""
