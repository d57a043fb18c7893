"""The Ray layer: joining a cluster (`cluster`), Ray Train runs (`train`), Tune searches
(`tune`, `tune_targets`) and actor pools (`actors`). It runs the functions pipelines hand it
and never imports `pgray.pipelines`."""
