"""Developer tools: training the bundled model and its corpus, the held-out and typing evals,
the benchmarks and the soak run. Imports the runtime packages; they never import this one."""
