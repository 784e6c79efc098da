"""The pipeline's stages, one module each, in the order `compress` runs them: data, select,
teacher, ig, aux, warmup, student, export, quantize, bench (edgekd.pipeline.stage)."""
