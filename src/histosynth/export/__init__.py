"""The export stage: a run's generated tiles as a dataset others can load (PNG class folders,
WebDataset shards or one HDF5 file) with its dataset card (histosynth.export.card)."""
