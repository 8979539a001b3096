"""The ``main()`` shared by every node: init, spin, clean shutdown, clear configuration errors."""
from __future__ import annotations

import signal
import sys
from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions
from rclpy.node import Node

from vla_rl_ros.core.config_io import ConfigError


class StopRequests:
    """SIGINT/SIGTERM handler: the first signal asks the spin loop to stop, a second one interrupts.

    The first request is only a flag, checked between callbacks, so no callback is cut in half: a
    recorder interrupted inside a bag write or while opening the next bag would leave a bag with
    no metadata. A node stuck in a long callback (a PPO update) still stops at the second signal,
    which launchers send after their grace period (``vla-rl launch``: SIGINT, then SIGTERM).
    """

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, signum, frame) -> None:
        """Count the request; from the second one on, interrupt whatever is running."""
        self.count += 1
        if self.count > 1:
            raise KeyboardInterrupt


def run_node(factory: Callable[[], Node], args=None) -> int:
    """Build the node with ``factory`` and spin it until Ctrl-C or shutdown; returns an exit code.

    A configuration error (bad parameter, unknown key) ends the process with code 2 and one
    readable line instead of a traceback, so a launcher can report why a required node died.
    """
    # Ctrl-C must be seen by Python while the context is still valid, so that nodes can publish
    # their last message (e.g. the recorder's partial-bag notice) on the way out. A process
    # started in the background inherits SIGINT ignored; and SIGTERM (what launchers and service
    # managers send) should clean up the same way.
    stop = StopRequests()
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    node = None
    code = 0
    try:
        node = factory()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while rclpy.ok() and not stop.count:
            # A bounded wait returns to Python regularly, so a stop request is seen within 0.25 s
            # even when no message arrives (rclpy's own handler is off, see above).
            executor.spin_once(timeout_sec=0.25)
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
