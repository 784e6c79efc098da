"""Choosing a student by what it costs on the target: every candidate architecture exported
once with random weights, measured on the device in one bundle with deploy/'s harness,
cached by the device's environment, and ranked against a latency budget (`edgekd select`,
`edgekd compress --latency-budget / --speedup`)."""
