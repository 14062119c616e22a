"""Benchmarks for dicomweb-server: STOW/QIDO/WADO-RS workloads against several servers."""
