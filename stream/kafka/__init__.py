"""Kafka: every client, admin call and topic creation of the tool (``clients``), and the
embedded broker (``embedded``).
"""
