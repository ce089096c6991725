"""Tools around the consumer: replay, offline scoring and evaluation, subscribers,
feedback, redrive, the demo and the design note's API.
"""
