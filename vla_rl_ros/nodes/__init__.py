"""ROS 2 nodes of the graph: thin wrappers (parameters, message conversion, QoS, timers) over the core."""
