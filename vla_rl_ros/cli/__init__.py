"""The ``vla-rl`` command line (ROS-free entry point to every job)."""
