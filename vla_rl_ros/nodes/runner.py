"""The ``main()`` shared by every node: init, spin, clean shutdown, clear configuration errors."""
from __future__ import annotations

import sys
from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

from vla_rl_ros.core.config_io import ConfigError


def run_node(factory: Callable[[], Node], args=None) -> int:
    """Build the node with ``factory`` and spin it until Ctrl-C or shutdown; returns an exit code.

    A configuration error (bad parameter, unknown key) ends the process with code 2 and one
    readable line instead of a traceback, so a launcher can report why a required node died.
    """
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = factory()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ConfigError as err:
        print(f"configuration error: {err}", file=sys.stderr, flush=True)
        code = 2
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return code
