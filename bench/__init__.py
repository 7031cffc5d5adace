"""Benchmarks, run by hand (`longtake bench ...`): `quality` measures what a minute of video keeps."""
