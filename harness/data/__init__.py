"""Datasets: the in-memory model, annotation readers, the synthetic benchmark, video decoding and sampling."""
