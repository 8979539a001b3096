"""The ROS-free core: policy, PPO, PRM, curriculum, environments and data (never imports rclpy)."""
