"""The compress pipeline: stages that read and write a run directory and skip valid outputs."""
