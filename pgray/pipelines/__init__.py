"""One pipeline per verb: train one category, evaluate one checkpoint, benchmark a grid, sweep a
search space. They compose the core, ask `pgray.distributed` to run things on Ray, and hand
results to `pgray.tracking`."""
