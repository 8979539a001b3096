"""The ``main()`` shared by every node: init, spin, clean shutdown, clear configuration errors."""
from __future__ import annotations

import sys
from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.signals import SignalHandlerOptions
from rclpy.node import Node

from vla_rl_ros.core.config_io import ConfigError


def run_node(factory: Callable[[], Node], args=None) -> int:
    """Build the node with ``factory`` and spin it until Ctrl-C or shutdown; returns an exit code.

    A configuration error (bad parameter, unknown key) ends the process with code 2 and one
    readable line instead of a traceback, so a launcher can report why a required node died.
    """
    # Ctrl-C must reach Python as KeyboardInterrupt while the context is still valid, so that
    # nodes can publish their last message (e.g. the recorder's partial-bag notice) on the way out.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
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
