"""Graph descriptions shared by the launch files and ``vla-rl launch`` (ROS-free)."""
