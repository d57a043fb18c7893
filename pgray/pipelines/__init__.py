"""The drivers, one per verb (train one category, evaluate one checkpoint, benchmark a grid,
sweep a search space, plan), each a straight line down the layers: they take their parts from
`pipelines.components` (pure or worker side), run them through `pipelines.runners` (the
driver's side: evaluations, the job queue, trainings, fits), ask `pgray.distributed` to run
things on Ray and hand results to `pgray.tracking`."""
