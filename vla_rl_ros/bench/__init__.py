"""Benchmarks that run the ROS graph (``vla-rl bench graph``, ``vla-rl bench latency``): not nodes.

They start the graph's nodes as processes and measure them from outside (a probe node counting
messages, stamps compared on one clock). The ROS-free benchmarks sit beside what they measure:
``core/policy/bench.py`` (decoding) and ``core/envs/bench.py`` (simulator steps).
"""
