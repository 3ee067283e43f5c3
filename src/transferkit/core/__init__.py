"""Shared core used by every task: images, data sets, backbones, model directories, engine, report."""
