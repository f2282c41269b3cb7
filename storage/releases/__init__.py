"""Dataset releases: what training and FFE-Bench consume, reproducible to the byte.

plan      which faces, in which split, under which version (a hash of the inputs and the config)
build     splits.parquet, images/, triplets.jsonl, the dataset card, manifest.json
triplets  source + two targets of one confusable pair, per identity (the JSONL and the loader)
shards    deterministic WebDataset tars, their index and _stats.json
verify    re-read every file against the manifest
paths     every path a release lists, resolved inside its folder (or refused)
diff      what changed between two versions
"""
