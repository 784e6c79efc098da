"""Distillation losses and the objectives that combine them with the task loss."""
