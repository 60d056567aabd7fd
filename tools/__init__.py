"""Developer tools: benchmarks, the multi-process check, the GPU check, reference loaders."""
